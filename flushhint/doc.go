// Package flushhint owns the flush engine: how a guest's request to make
// its writes durable ("flush") becomes host I/O for one backing.
//
// An Engine serves one device. It combines:
//
//   - Group commit. Concurrent Flush calls share one sync of the backing.
//     The durability guarantee is: a Flush returns nil only after a sync
//     that STARTED after that Flush was called has completed successfully.
//     A sync that was already running when a request arrived never
//     completes it, because writes made just before the request may have
//     missed it. Requests that arrive while a sync runs form the next
//     batch; the batch's first arrival leads it (runs the sync itself, in
//     its own goroutine, so a lone flusher pays nothing but a mutex), and
//     when a sync ends, exactly one waiter of the next batch is handed the
//     lead through a one-slot channel while the rest of the finished batch
//     is woken by closing that batch's channel: one wake-up per waiter,
//     no thundering herd on leadership.
//   - A Strategy chosen per backing (see ForFile, ForDevDAX, ForBacking),
//     each stating what its Sync guarantees.
//   - An optional token-bucket rate limit on syncs (not requests: with
//     group commit a request storm already collapses into few syncs, and
//     syncs are what turn into host I/O).
//   - Periodic writeback for NVDIMMs on plain files, which have no guest
//     flush path: every interval a sync is issued through the same group
//     commit, so written data is durable at most one interval (plus one
//     sync) later, and a gauge reports the bytes not yet durable, measured
//     with cachestat(2) or, on kernels without it, bounded above by
//     mincore(2) residency.
//   - Prometheus metrics labelled by device, registered on a caller's
//     Registerer; several engines share one registry.
package flushhint
