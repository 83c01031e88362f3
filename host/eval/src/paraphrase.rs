//! The optional paraphrase pass (`--paraphrase <policy spec>`): a chat model rewrites each task's
//! request in other words before the evaluated model sees it, so a score does not hinge on one
//! template's phrasing. The task's system prompt (the output contract) is left alone.
//!
//! A request that cannot be paraphrased (the endpoint failed after its retries, or answered with
//! nothing) keeps its original wording, and the sample records why.

use sigmaforge_runtime::Message;

use crate::policy::Policy;

/// What the paraphrasing model is told.
pub const PARAPHRASE_INSTRUCTIONS: &str = "You rewrite requests that security analysts send to a detection engineer. \
Rewrite the request you are given in different words, in the same person's voice. Keep every concrete detail it \
mentions (program and file names, event IDs, channels, ATT&CK techniques, hosts) and add none. Do not write a \
detection rule or any detection logic. Answer with the rewritten request only.";

/// How one prompt came out of the pass.
#[derive(Debug, Clone, PartialEq)]
pub enum Paraphrased {
    /// The prompt now holds the paraphrase; the original request is kept here.
    Done { original: String },
    /// The prompt is unchanged, for this reason.
    Failed { reason: String },
    /// The prompt has no user message to rewrite.
    Skipped,
}

/// Rewrites the last user message of every prompt in place, with `paraphraser` answering
/// `[system: PARAPHRASE_INSTRUCTIONS, user: <request>]`. One entry per prompt, in order.
pub fn paraphrase_prompts(paraphraser: &dyn Policy, prompts: &mut [Vec<Message>], done: &(dyn Fn() + Sync)) -> Vec<Paraphrased> {
    let user_index: Vec<Option<usize>> = prompts.iter().map(|p| p.iter().rposition(|m| m.role == "user")).collect();
    let requests: Vec<Vec<Message>> = prompts
        .iter()
        .zip(&user_index)
        .filter_map(|(p, i)| i.map(|i| p[i].content.clone()))
        .map(|request| {
            vec![Message { role: "system".into(), content: PARAPHRASE_INSTRUCTIONS.into() }, Message { role: "user".into(), content: request }]
        })
        .collect();
    let mut answers = paraphraser.complete_all(&requests, None, &|_, _| done()).into_iter();
    prompts
        .iter_mut()
        .zip(user_index)
        .map(|(prompt, i)| {
            let Some(i) = i else { return Paraphrased::Skipped };
            match answers.next().expect("one answer per request") {
                Err(f) => Paraphrased::Failed { reason: format!("paraphrase failed: {}", f.reason) },
                Ok(c) if c.text.trim().is_empty() => Paraphrased::Failed { reason: "paraphrase failed: the model answered with nothing".into() },
                Ok(c) => {
                    let original = std::mem::replace(&mut prompt[i].content, c.text.trim().to_string());
                    Paraphrased::Done { original }
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Completion, Failure, Outcome, Trace};
    use sigmaforge_reward::Toolbox;

    /// Upper-cases requests; fails those that mention "fail"; answers "" to "empty".
    struct Shouty;
    impl Policy for Shouty {
        fn model(&self) -> &str {
            "shouty"
        }
        fn spec(&self) -> String {
            "test:shouty".into()
        }
        fn supports_tools(&self) -> bool {
            false
        }
        fn complete(&self, messages: &[Message], _: Option<&Toolbox>) -> Outcome {
            assert_eq!(messages[0].content, PARAPHRASE_INSTRUCTIONS);
            let request = &messages[1].content;
            let trace = Trace { attempts: 1, ..Trace::default() };
            let done = |text: String| Completion { text, trace: trace.clone() };
            if request.contains("fail") {
                return Err(Failure { reason: "HTTP 500 (after 1 attempts)".into(), trace });
            }
            Ok(done(if request.contains("empty") { "  ".into() } else { request.to_uppercase() }))
        }
    }

    fn prompt(user: &str) -> Vec<Message> {
        vec![Message { role: "system".into(), content: "contract".into() }, Message { role: "user".into(), content: user.into() }]
    }

    #[test]
    fn rewrites_the_user_message_and_keeps_the_original_or_the_reason() {
        let mut prompts =
            vec![prompt("find at.exe"), prompt("please fail"), prompt("empty"), vec![Message { role: "system".into(), content: "only".into() }]];
        let out = paraphrase_prompts(&Shouty, &mut prompts, &|| {});
        assert_eq!(out[0], Paraphrased::Done { original: "find at.exe".into() });
        assert_eq!(prompts[0][1].content, "FIND AT.EXE");
        assert_eq!(prompts[0][0].content, "contract", "the system prompt is not paraphrased");
        assert!(matches!(&out[1], Paraphrased::Failed { reason } if reason.contains("HTTP 500")));
        assert_eq!(prompts[1][1].content, "please fail");
        assert!(matches!(&out[2], Paraphrased::Failed { reason } if reason.contains("nothing")));
        assert_eq!(out[3], Paraphrased::Skipped);
    }
}
