//! The Linux test fixture: a real Linux kernel and user space that tests
//! boot under our VMM to prove devices against stock drivers and the guest
//! channel against real guest tools.
//!
//! This project's CI hosts run KVM on PVM, where guest kernel code is
//! emulated and a stock kernel stops in early boot (DESIGN.md). The kernel
//! here is Debian's `linux-source-6.1` with the configuration and three
//! patches in `kernel/`, built and cached on demand by `build-kernel`
//! (README.md beside this file says why each piece is there). On a host
//! with VT-x or SVM, `VMD_FIXTURE_KERNEL=stock` switches the same tests to
//! Debian's stock cloud kernel.
//!
//! - [`kernel`]: the kernel to boot and the VM settings it needs;
//! - [`initramfs`]: uncompressed newc cpio images: busybox, files from
//!   Debian packages, our binaries, an `/init` script per test;
//! - [`debian`]: Debian packages fetched and unpacked on demand;
//! - [`images`]: the images the tests boot, and our programs in them.

pub mod debian;
pub mod images;
pub mod initramfs;
pub mod kernel;
