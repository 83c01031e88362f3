//! Template definitions read into plans: element trees with numbered holes.

use super::binxml::*;
use super::walk::unique;

/// One template definition, read into the shape its records share.
#[derive(Debug)]
pub struct Plan {
    pub(super) root: Element,
}

#[derive(Debug)]
pub(super) struct Element {
    pub(super) name: Box<str>,
    /// The value index whose null leaves this element out.
    pub(super) dependency: Option<u16>,
    pub(super) attributes: Vec<Attribute>,
    /// Child elements and holes (which may hold text, a fragment, or nothing).
    pub(super) children: Vec<Child>,
    /// Literal text, only in an element with no children.
    pub(super) text: Option<Box<str>>,
    /// Worked out once per definition: whether `children` holds holes (whose fragments add
    /// elements only a record knows), whether its child elements' names are all different,
    /// how its `Data` children are written when it is `EventData`/`UserData`, and whether the
    /// keys of its children are all different then.
    pub(super) has_holes: bool,
    pub(super) names_unique: bool,
    pub(super) data_form: DataForm,
    pub(super) data_keys_unique: bool,
    /// Whether its `Name` attribute is there (never planned outside `Data` and `System`).
    pub(super) has_name_attribute: bool,
}

/// How the crate writes the `Data` children of `EventData` and `UserData` (MS-EVEN6 event
/// data): each under its `Name` (`"N": value`) when one has a name, else all their values
/// together where the first one is (`"Data": {"#text": [values]}`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum DataForm {
    /// Every `Data` child has a literal, non-empty `Name`.
    Named,
    /// No `Data` child has a `Name`.
    Positional,
    /// Some do, some do not, or a name is a substitution: not planned.
    Mixed,
}

#[derive(Debug)]
pub(super) struct Attribute {
    pub(super) name: Box<str>,
    /// `Element_Attribute`, the field name of an attribute of a `System` element.
    pub(super) field: Box<str>,
    pub(super) value: Piece,
}

impl Element {
    pub(super) fn new(name: Box<str>, dependency: Option<u16>) -> Element {
        Element {
            name,
            dependency,
            attributes: Vec::new(),
            children: Vec::new(),
            text: None,
            has_holes: false,
            names_unique: true,
            data_form: DataForm::Named,
            data_keys_unique: true,
            has_name_attribute: false,
        }
    }

    /// Works out the flags once the element is read.
    pub(super) fn finish(mut self) -> Option<Element> {
        if self.text.is_some() && !self.children.is_empty() {
            return None;
        }
        let elements = || self.children.iter().filter_map(|c| if let Child::Element(e) = c { Some(e) } else { None });
        self.has_holes = self.children.iter().any(|c| matches!(c, Child::Hole(_)));
        self.names_unique = unique(elements().map(|e| &*e.name)).is_some();
        let data = || elements().filter(|e| &*e.name == "Data");
        self.data_form = if data().all(|e| literal_name(e).is_some_and(|n| !n.is_empty())) {
            DataForm::Named
        } else if data().all(|e| !e.attributes.iter().any(|a| &*a.name == "Name")) {
            DataForm::Positional
        } else {
            DataForm::Mixed
        };
        let mut keys: Vec<&str> = elements().filter(|e| &*e.name != "Data").map(|e| &*e.name).collect();
        match self.data_form {
            DataForm::Named => keys.extend(data().filter_map(literal_name)),
            _ => keys.extend(data().next().map(|_| "Data")),
        }
        self.data_keys_unique = unique(keys.into_iter()).is_some();
        self.has_name_attribute = self.attributes.iter().any(|a| &*a.name == "Name");
        unique(self.attributes.iter().map(|a| &*a.name))?;
        Some(self)
    }
}

#[derive(Debug)]
pub(super) enum Child {
    Element(Element),
    Hole(u16),
}

#[derive(Debug)]
pub(super) enum Piece {
    Literal(Box<str>),
    /// A substitution: the value with this index.
    Hole(u16),
}

/// Reads one definition's tokens; every method gives `None` for what is not planned.
pub(super) struct Reader<'d> {
    pub(super) data: &'d [u8],
    pub(super) pos: usize,
    pub(super) end: usize,
    /// Element starts carry a `DependencyId` in template definitions, not in records.
    pub(super) dependencies: bool,
}

impl Reader<'_> {
    pub(super) fn peek(&self) -> Option<u8> {
        self.data[..self.end].get(self.pos).copied()
    }

    pub(super) fn u8(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    pub(super) fn u16(&mut self) -> Option<u16> {
        let v = u16_at(&self.data[..self.end], self.pos)?;
        self.pos += 2;
        Some(v)
    }

    pub(super) fn u32(&mut self) -> Option<u32> {
        let v = u32_at(&self.data[..self.end], self.pos)?;
        self.pos += 4;
        Some(v)
    }

    /// A name reference: an offset into the chunk's data, the name itself written right there
    /// when this is its first use in the chunk.
    pub(super) fn name(&mut self) -> Option<Box<str>> {
        let offset = self.u32()?;
        let raw = name_bytes(self.data, offset)?;
        if offset as usize == self.pos {
            // Next-offset, hash, count, the characters and a NUL.
            self.pos += 8 + raw.len() + 2;
        }
        utf16(raw)
    }

    pub(super) fn definition(&mut self) -> Option<Plan> {
        if self.peek()? == FRAGMENT_HEADER {
            self.pos += 4;
        }
        let token = self.u8()?;
        if token & !MORE != OPEN_START_ELEMENT {
            return None;
        }
        let root = self.element(token, 0)?;
        if self.pos < self.end && self.u8()? != END_OF_STREAM {
            return None;
        }
        Some(Plan { root })
    }

    pub(super) fn element(&mut self, token: u8, depth: usize) -> Option<Element> {
        if depth > MAX_DEPTH {
            return None;
        }
        let dependency = if self.dependencies { Some(self.u16()?).filter(|d| *d != NO_DEPENDENCY) } else { None };
        let _size = self.u32()?;
        let name = self.name()?;
        if token & MORE != 0 {
            let _attribute_bytes = self.u32()?;
        }
        let mut element = Element::new(name, dependency);
        loop {
            match self.u8()? {
                t if t & !MORE == ATTRIBUTE => {
                    let name = self.name()?;
                    let value = self.piece()?;
                    let field = format!("{}_{name}", element.name).into();
                    element.attributes.push(Attribute { name, field, value });
                }
                CLOSE_START_ELEMENT => break,
                CLOSE_EMPTY_ELEMENT => return element.finish(),
                _ => return None,
            }
        }
        loop {
            match self.peek()? {
                t if t & !MORE == OPEN_START_ELEMENT => {
                    self.pos += 1;
                    element.children.push(Child::Element(self.element(t, depth + 1)?));
                }
                t if is_substitution(t) => match self.piece()? {
                    Piece::Hole(index) => element.children.push(Child::Hole(index)),
                    Piece::Literal(_) => return None,
                },
                t if t & !MORE == VALUE => match self.piece()? {
                    Piece::Literal(text) if element.text.is_none() => element.text = Some(text),
                    _ => return None,
                },
                END_ELEMENT => {
                    self.pos += 1;
                    break;
                }
                _ => return None,
            }
        }
        element.finish()
    }

    /// An attribute's value or a piece of content: one literal string or one substitution.
    /// Two side by side (text around a substitution) are not planned.
    pub(super) fn piece(&mut self) -> Option<Piece> {
        let piece = match self.u8()? {
            t if t & !MORE == VALUE => {
                if self.u8()? != STRING_TYPE {
                    return None;
                }
                let chars = usize::from(self.u16()?);
                let bytes = self.data[..self.end].get(self.pos..self.pos + 2 * chars)?;
                self.pos += 2 * chars;
                Piece::Literal(utf16(bytes)?)
            }
            t if is_substitution(t) => {
                let index = self.u16()?;
                let _value_type = self.u8()?;
                Piece::Hole(index)
            }
            _ => return None,
        };
        match self.peek()? {
            t if t & !MORE == VALUE || is_substitution(t) => None,
            _ => Some(piece),
        }
    }
}

/// The literal `Name` of a `Data` element.
pub(super) fn literal_name(data: &Element) -> Option<&str> {
    match data.attributes.iter().find(|a| &*a.name == "Name") {
        Some(Attribute { value: Piece::Literal(name), .. }) => Some(name),
        _ => None,
    }
}
