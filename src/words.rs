//! Options named by words on the command line (transports, operations,
//! memory kinds, granularities): one table gives each variant its word and
//! aliases, and with it `parse` (trimmed, any case) and `Display`.

/// `named_by_words!(Type, "what it is", { Variant => "word" | "alias", ... })`
/// implements `Type::parse` (an unknown word is a usage error that lists
/// the words) and `Display` (the first word).
macro_rules! named_by_words {
    ($ty:ident, $what:literal, { $($variant:ident => $word:literal $(| $alias:literal)*),+ $(,)? }) => {
        impl $ty {
            pub fn parse(s: &str) -> $crate::error::Result<$ty> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($word $(| $alias)* => Ok($ty::$variant),)+
                    other => Err($crate::error::Error::usage(format!(
                        "unknown {} '{other}' (available: {})",
                        $what,
                        [$($word),+].join(", ")
                    ))),
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(match self {
                    $($ty::$variant => $word,)+
                })
            }
        }
    };
}

pub(crate) use named_by_words;

#[cfg(test)]
mod tests {
    #[derive(Debug, PartialEq)]
    enum Colour {
        Red,
        Blue,
    }
    named_by_words!(Colour, "colour", { Red => "red" | "r", Blue => "blue" });

    #[test]
    fn words_parse_in_any_case_with_aliases_and_print_as_the_first() {
        assert_eq!(Colour::parse(" RED ").unwrap(), Colour::Red);
        assert_eq!(Colour::parse("r").unwrap(), Colour::Red);
        assert_eq!(Colour::Blue.to_string(), "blue");
        let e = Colour::parse("green").unwrap_err();
        assert_eq!(e.message, "unknown colour 'green' (available: red, blue)");
    }
}
