// Package label owns the NVDIMM namespace label area and the PFN/DAX info
// blocks that give a namespace its mode.
//
// The label area is the small storage QEMU keeps in the last label-size
// bytes of an NVDIMM backing and the guest reaches through _LSR/_LSW. It
// holds two index blocks and an array of label slots (UEFI 2.7 v1.1 with
// 128-byte labels, v1.2 with 256-byte labels). This package decodes it
// exactly as Linux does (index validation, current-block selection, live
// slot rules), edits it with the kernel's crash-safe update order (new
// label into a free slot, then the staging index with the next sequence
// number), and checks and repairs it on request.
//
// Everything works over an io.ReaderAt / io.WriterAt plus a size, so the
// same code serves the label tail of a backing file, a bare label area
// image, or a byte buffer in tests. The package does not compute
// interleave-set cookies (they come from the NFIT; see package acpi): its
// APIs take the expected cookies as parameters.
//
// Info blocks (struct nd_pfn_sb in Linux) sit at namespace offset 4 KiB
// and tell the guest that a namespace is fsdax (NVDIMM_PFN_INFO) or devdax
// (NVDIMM_DAX_INFO). NewInfoBlock derives dataoff/npfns exactly as the
// kernel's nd_pfn_init does, so the guest re-validates the block and uses
// it instead of writing its own.
package label
