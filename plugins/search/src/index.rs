//! The inverted index and BM25F ranking.
//!
//! BM25F (Robertson & Zaragoza, 2009) scores a document by combining per-field term frequencies,
//! each normalised by its own field length, before BM25's saturation. Two fields: the *title*
//! (the document's id as one term plus its title, where "Security Event ID 4688: A new process has been
//! created" names the subject) and the *body*. Boosting the title makes the document *about* a
//! term beat documents that merely mention it, which plain BM25 over title + text does not.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::corpus::Document;
use crate::tokenize::{for_each_term, terms};

/// Ranking parameters. The defaults were tuned on the shipped corpus with the ranking tests in
/// `tests/ranking.rs` (classic BM25 values for k1 and b; the title weight is what BM25F adds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bm25fParams {
    /// Term-frequency saturation.
    pub k1: f32,
    /// Weight of a title occurrence relative to a body occurrence.
    pub title_weight: f32,
    /// Length normalisation of the title field (0 = none, 1 = full).
    pub b_title: f32,
    /// Length normalisation of the body field.
    pub b_body: f32,
}

impl Default for Bm25fParams {
    fn default() -> Self {
        Bm25fParams { k1: 1.2, title_weight: 4.0, b_title: 0.8, b_body: 0.4 }
    }
}

/// FxHash (rustc's hasher): the term table is hashed ~1.5 million times while indexing, and
/// std's DoS-resistant SipHash is several times slower for short keys. The keys come from the
/// operator's own corpus, so flooding is not a concern.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8-byte chunk")));
        }
        for &b in chunks.remainder() {
            self.add(u64::from(b));
        }
    }

    fn write_u8(&mut self, b: u8) {
        self.add(u64::from(b));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type TermTable = HashMap<String, u32, BuildHasherDefault<FxHasher>>;

#[derive(Debug, Clone, Copy)]
struct Posting {
    doc: u32,
    title_tf: u16,
    body_tf: u16,
}

/// A searchable corpus.
pub struct Index {
    docs: Vec<Document>,
    term_ids: TermTable,
    postings: Vec<Vec<Posting>>,
    title_len: Vec<u32>,
    body_len: Vec<u32>,
    avg_title_len: f32,
    avg_body_len: f32,
    params: Bm25fParams,
}

/// One ranked document.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// Position of the document in [`Index::documents`].
    pub doc: usize,
    pub score: f32,
}

impl Index {
    pub fn build(docs: Vec<Document>, params: Bm25fParams) -> Index {
        let mut index = Index {
            term_ids: TermTable::default(),
            postings: Vec::new(),
            title_len: Vec::with_capacity(docs.len()),
            body_len: Vec::with_capacity(docs.len()),
            avg_title_len: 0.0,
            avg_body_len: 0.0,
            params,
            docs: Vec::new(),
        };
        for (doc_no, doc) in docs.iter().enumerate() {
            let doc_no = doc_no as u32;
            let mut title_len = 0u32;
            let mut body_len = 0u32;
            // Documents are indexed in order, so a term already seen in this document has this
            // document as the last entry of its postings: count in place, no per-document map.
            let mut add = |term: &str, in_title: bool, index: &mut Index| {
                let id = index.term_id(term);
                let list = &mut index.postings[id as usize];
                if list.last().is_none_or(|p| p.doc != doc_no) {
                    list.push(Posting { doc: doc_no, title_tf: 0, body_tf: 0 });
                }
                let posting = list.last_mut().expect("pushed above");
                if in_title {
                    posting.title_tf = posting.title_tf.saturating_add(1);
                    title_len += 1;
                } else {
                    posting.body_tf = posting.body_tf.saturating_add(1);
                    body_len += 1;
                }
            };
            // The id as one term (a model may look up an id it saw in an earlier result); its parts
            // are not indexed, they repeat the title ("attack-T1003.001" / "T1003.001 OS ...").
            add(&doc.id.to_lowercase(), true, &mut index);
            for_each_term(&doc.title, |t| add(t, true, &mut index));
            for_each_term(&doc.text, |t| add(t, false, &mut index));
            index.title_len.push(title_len);
            index.body_len.push(body_len);
        }
        for list in &mut index.postings {
            list.shrink_to_fit();
        }
        let n = docs.len().max(1) as f32;
        index.avg_title_len = (index.title_len.iter().map(|&l| l as f32).sum::<f32>() / n).max(1.0);
        index.avg_body_len = (index.body_len.iter().map(|&l| l as f32).sum::<f32>() / n).max(1.0);
        index.docs = docs;
        index
    }

    fn term_id(&mut self, term: &str) -> u32 {
        if let Some(&id) = self.term_ids.get(term) {
            return id;
        }
        let id = self.postings.len() as u32;
        self.term_ids.insert(term.to_owned(), id);
        self.postings.push(Vec::new());
        id
    }

    /// Changes the ranking parameters (they apply at query time; the index is unchanged).
    pub fn set_params(&mut self, params: Bm25fParams) {
        self.params = params;
    }

    pub fn params(&self) -> Bm25fParams {
        self.params
    }

    pub fn documents(&self) -> &[Document] {
        &self.docs
    }

    pub fn len(&self) -> usize {
        self.docs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// Number of distinct terms.
    pub fn vocabulary_len(&self) -> usize {
        self.term_ids.len()
    }

    /// Inverse document frequency of a term (BM25's, always positive); None for unknown terms.
    pub fn idf(&self, term: &str) -> Option<f32> {
        let id = *self.term_ids.get(term)?;
        let df = self.postings[id as usize].len() as f32;
        let n = self.docs.len() as f32;
        Some((1.0 + (n - df + 0.5) / (df + 0.5)).ln())
    }

    /// The `k` best documents for `query`, best first (ties: corpus order). Query terms are
    /// counted once each; terms not in the corpus are ignored, so an all-unknown query has no hits.
    pub fn search(&self, query: &str, k: usize) -> Vec<Hit> {
        let mut query_terms = terms(query);
        query_terms.sort_unstable();
        query_terms.dedup();
        let mut scores = vec![0f32; self.docs.len()];
        let p = self.params;
        for term in &query_terms {
            let (Some(&id), Some(idf)) = (self.term_ids.get(term.as_str()), self.idf(term)) else { continue };
            for posting in &self.postings[id as usize] {
                let d = posting.doc as usize;
                let title_norm = 1.0 - p.b_title + p.b_title * self.title_len[d] as f32 / self.avg_title_len;
                let body_norm = 1.0 - p.b_body + p.b_body * self.body_len[d] as f32 / self.avg_body_len;
                let tf = p.title_weight * posting.title_tf as f32 / title_norm + posting.body_tf as f32 / body_norm;
                scores[d] += idf * tf / (p.k1 + tf);
            }
        }
        let mut hits: Vec<Hit> = scores.iter().enumerate().filter(|(_, s)| **s > 0.0).map(|(doc, &score)| Hit { doc, score }).collect();
        let better = |a: &Hit, b: &Hit| b.score.total_cmp(&a.score).then(a.doc.cmp(&b.doc));
        if hits.len() > k && k > 0 {
            hits.select_nth_unstable_by(k - 1, better);
        }
        hits.truncate(k);
        hits.sort_unstable_by(better);
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, title: &str, text: &str) -> Document {
        Document { id: id.into(), title: title.into(), text: text.into(), source_url: String::new() }
    }

    #[test]
    fn title_matches_outrank_body_mentions() {
        let index = Index::build(
            vec![
                doc("a", "Registry run keys", "Persistence through autostart entries."),
                doc("b", "Scheduled tasks", "Unlike registry run keys, tasks run on a schedule."),
                doc("c", "Unrelated", "Nothing to see."),
            ],
            Bm25fParams::default(),
        );
        let hits = index.search("registry run keys", 5);
        assert_eq!(hits.iter().map(|h| h.doc).collect::<Vec<_>>(), [0, 1]);
        assert!(hits[0].score > hits[1].score);
    }

    #[test]
    fn unknown_terms_give_no_hits_and_k_limits() {
        let index = Index::build(vec![doc("a", "x", "y"), doc("b", "x", "z")], Bm25fParams::default());
        assert!(index.search("nothing here", 5).is_empty());
        assert_eq!(index.search("x", 1).len(), 1);
        assert_eq!(index.search("x", 0).len(), 0);
        // equal scores keep corpus order
        assert_eq!(index.search("x", 5).iter().map(|h| h.doc).collect::<Vec<_>>(), [0, 1]);
    }
}
