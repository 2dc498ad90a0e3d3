// Package qemu owns the integration harness that boots real Linux guests
// under QEMU to prove NVDIMM behaviour end to end: it installs QEMU and the
// guest userland from Debian's archive when missing, builds a cached guest
// kit (kernel, initramfs with the NVDIMM modules, busybox, ndctl/daxctl,
// mke2fs), boots guests with TCG (KVM only when a probe boot succeeds), passes
// scenario scripts and results through a 9p share, and keeps console logs of
// failed scenarios under artifacts/. The scenarios live in its _test files;
// they drive the nvdimm-backend binary the way users do.
//
// The guest scenarios are behind the "integration" build tag: run them with
// `make integration` or `go test -tags integration ./integration/qemu/...`.
// The harness's parsers (console markers, its NFIT reader) and install.sh's
// source derivation are tested without the tag, in `make unit`.
package qemu
