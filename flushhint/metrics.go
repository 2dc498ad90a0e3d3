package flushhint

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric names, all with the label "device". They are part of the
// daemon's /metrics contract.
const (
	MetricLatency        = "nvdimm_flush_latency_seconds"          // histogram: request arrival to completion
	MetricSyncDuration   = "nvdimm_flush_sync_duration_seconds"    // histogram: one Strategy.Sync
	MetricRequests       = "nvdimm_flush_requests_total"           // counter: Flush calls
	MetricSyncs          = "nvdimm_flush_syncs_total"              // counter: syncs issued (guest and writeback)
	MetricCoalesced      = "nvdimm_flush_requests_coalesced_total" // counter: requests completed by a sync another request led
	MetricErrors         = "nvdimm_flush_errors_total"             // counter: failed syncs
	MetricRateLimitWaits = "nvdimm_flush_rate_limit_waits_total"   // counter: syncs delayed by the rate limit
	MetricDirtyBytes     = "nvdimm_flush_not_durable_bytes"        // gauge: bytes written but not yet durable (writeback only)
)

type vecs struct {
	latency   *prometheus.HistogramVec
	syncDur   *prometheus.HistogramVec
	requests  *prometheus.CounterVec
	syncs     *prometheus.CounterVec
	coalesced *prometheus.CounterVec
	errors    *prometheus.CounterVec
	waits     *prometheus.CounterVec
	dirty     *prometheus.GaugeVec
}

// buckets span 10 µs to about 1.3 s.
var buckets = prometheus.ExponentialBuckets(10e-6, 2, 18)

func newVecs() *vecs {
	l := []string{"device"}
	return &vecs{
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: MetricLatency,
			Help: "Flush request latency from arrival to completion, in seconds.", Buckets: buckets}, l),
		syncDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: MetricSyncDuration,
			Help: "Duration of one backing sync, in seconds.", Buckets: buckets}, l),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricRequests,
			Help: "Flush requests received."}, l),
		syncs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricSyncs,
			Help: "Backing syncs issued (guest flushes and periodic writeback)."}, l),
		coalesced: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricCoalesced,
			Help: "Flush requests completed by a sync shared with an earlier request of the same batch."}, l),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricErrors,
			Help: "Backing syncs that failed."}, l),
		waits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricRateLimitWaits,
			Help: "Syncs delayed by the per-device rate limit."}, l),
		dirty: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: MetricDirtyBytes,
			Help: "Bytes of the backing written but not yet durable (cachestat dirty+writeback, or a mincore residency upper bound)."}, l),
	}
}

// register registers v's collectors on reg, reusing collectors another
// engine already registered there, and returns the ones to use.
func (v *vecs) register(reg prometheus.Registerer) (*vecs, error) {
	out := *v
	var err error
	regOne := func(c prometheus.Collector) prometheus.Collector {
		if err != nil {
			return c
		}
		if e := reg.Register(c); e != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(e, &are) {
				return are.ExistingCollector
			}
			err = e
		}
		return c
	}
	var ok bool
	if out.latency, ok = regOne(v.latency).(*prometheus.HistogramVec); !ok {
		return nil, fmt.Errorf("flush metrics: %s is registered as another type", MetricLatency)
	}
	if out.syncDur, ok = regOne(v.syncDur).(*prometheus.HistogramVec); !ok {
		return nil, fmt.Errorf("flush metrics: %s is registered as another type", MetricSyncDuration)
	}
	counters := []struct {
		p    **prometheus.CounterVec
		name string
	}{{&out.requests, MetricRequests}, {&out.syncs, MetricSyncs}, {&out.coalesced, MetricCoalesced},
		{&out.errors, MetricErrors}, {&out.waits, MetricRateLimitWaits}}
	for _, c := range counters {
		if *c.p, ok = regOne(*c.p).(*prometheus.CounterVec); !ok {
			return nil, fmt.Errorf("flush metrics: %s is registered as another type", c.name)
		}
	}
	if out.dirty, ok = regOne(v.dirty).(*prometheus.GaugeVec); !ok {
		return nil, fmt.Errorf("flush metrics: %s is registered as another type", MetricDirtyBytes)
	}
	if err != nil {
		return nil, fmt.Errorf("flush metrics: %w", err)
	}
	return &out, nil
}

// devMetrics are one device's children of the vectors.
type devMetrics struct {
	v         *vecs
	device    string
	latency   prometheus.Observer
	syncDur   prometheus.Observer
	requests  prometheus.Counter
	syncs     prometheus.Counter
	coalesced prometheus.Counter
	errors    prometheus.Counter
	waits     prometheus.Counter
	dirty     prometheus.Gauge
}

func (v *vecs) forDevice(device string) *devMetrics {
	return &devMetrics{
		v:         v,
		device:    device,
		latency:   v.latency.WithLabelValues(device),
		syncDur:   v.syncDur.WithLabelValues(device),
		requests:  v.requests.WithLabelValues(device),
		syncs:     v.syncs.WithLabelValues(device),
		coalesced: v.coalesced.WithLabelValues(device),
		errors:    v.errors.WithLabelValues(device),
		waits:     v.waits.WithLabelValues(device),
		dirty:     v.dirty.WithLabelValues(device),
	}
}

// remove deletes the device's series, so a released device disappears
// from /metrics.
func (m *devMetrics) remove() {
	v := m.v
	v.latency.DeleteLabelValues(m.device)
	v.syncDur.DeleteLabelValues(m.device)
	v.requests.DeleteLabelValues(m.device)
	v.syncs.DeleteLabelValues(m.device)
	v.coalesced.DeleteLabelValues(m.device)
	v.errors.DeleteLabelValues(m.device)
	v.waits.DeleteLabelValues(m.device)
	v.dirty.DeleteLabelValues(m.device)
}
