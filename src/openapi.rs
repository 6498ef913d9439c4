//! The OpenAPI 3.1 document served at `GET /openapi.json`. It is kept by hand
//! next to the route table; `route::tests` fails if the two disagree.

pub const DOCUMENT: &str = include_str!("openapi.json");
