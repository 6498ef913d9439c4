//! `named_enum!`: a fieldless enum whose variants have one wire name each,
//! written once — the serde name, `as_str` and `parse` all come from it.

/// Declares the enum (with `Serialize`/`Deserialize` under those names),
/// `as_str`, `parse` and `ALL`.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        $vis enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

pub(crate) use named_enum;

#[cfg(test)]
mod tests {
    named_enum! {
        /// A sample.
        enum Color {
            Red = "red",
            /// Documented.
            DarkBlue = "dark_blue",
        }
    }

    #[test]
    fn names_agree_everywhere() {
        for c in Color::ALL {
            assert_eq!(Color::parse(c.as_str()), Some(*c));
            let json = serde_json::to_string(c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
            assert_eq!(serde_json::from_str::<Color>(&json).unwrap(), *c);
        }
        assert_eq!(Color::parse("green"), None);
        assert_eq!(Color::DarkBlue.as_str(), "dark_blue");
    }
}
