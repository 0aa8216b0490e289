//! The built-in guest: the `mqhook-guest-nanomq` library as a component of the `filter` world.
//!
//! The host embeds this component and runs it when no other guest is configured. All the logic —
//! rules, topic matching, bodies, encodings — is the library's; this crate is only the export, kept
//! apart so that other guests can link the library without it.

mqhook_guest_nanomq::export_guest!(mqhook_guest_nanomq::Filter, "builtin");
