//! Types shared by the mlag-sync XDP program (`sync-ebpf`) and the agent
//! (`sync-agent`), plus the parsing and classification rules both apply.
//!
//! Everything here is `no_std` so the kernel side can use it. With the `user`
//! feature the agent gets `aya::Pod` impls for the map value types.
#![no_std]

pub mod arp;
pub mod capture;
pub mod counters;
pub mod nd;
pub mod policy;
pub mod wire;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: these are `#[repr(C)]` plain-old-data types with no padding that
    // could leak uninitialised bytes (sizes asserted in their modules).
    unsafe impl aya::Pod for crate::capture::CaptureRecord {}
    unsafe impl aya::Pod for crate::capture::MacKey {}
    unsafe impl aya::Pod for crate::capture::InjectMark {}
    unsafe impl aya::Pod for crate::capture::InjectMark6 {}
    unsafe impl aya::Pod for crate::counters::Block {}
}
