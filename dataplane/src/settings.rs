//! The fleet settings a node receives from the control plane: the domain types and their
//! decoding live in `switchyard-common`, beside the control plane's encoding of them.

pub use switchyard_common::settings::*;

#[cfg(test)]
pub(crate) mod tests {
    pub(crate) use switchyard_common::settings::testing::sample;
}
