//! Empty library target: sync-agent build-depends on this crate so cargo
//! rebuilds the agent when the kernel code changes (see aya-build).
#![no_std]
