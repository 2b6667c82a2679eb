//! Key refresh and resharing: a key's holders move it to a new holder set (or refresh their
//! shares in place) under the same group key and threshold. The rounds and every check of
//! what arrives are in [`core`].

pub mod core;
