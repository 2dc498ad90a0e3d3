package vhostuser

import "github.com/prometheus/client_golang/prometheus"

// Metric names of a Server, all with the constant label "device".
const (
	MetricConnections = "nvdimm_backend_vhost_connections_total" // front-end connections served
	MetricRequests    = "nvdimm_backend_vhost_requests_total"    // descriptor chains handed to the device
	MetricBadChains   = "nvdimm_backend_vhost_bad_chains_total"  // rings or chains refused (device needs reset)
	MetricShmemMaps   = "nvdimm_backend_vhost_shmem_maps_total"  // SHMEM_MAP requests sent successfully
)

// Collectors returns collectors reading the server's Stats, labelled
// device=device, for a caller's registry (register them, and unregister
// them when the server goes away).
func (s *Server) Collectors(device string) []prometheus.Collector {
	labels := prometheus.Labels{"device": device}
	counter := func(name, help string, v func() uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels},
			func() float64 { return float64(v()) })
	}
	return []prometheus.Collector{
		counter(MetricConnections, "vhost-user front-end connections served.", s.Stats.Connections.Load),
		counter(MetricRequests, "Descriptor chains handed to the device.", s.Stats.Requests.Load),
		counter(MetricBadChains, "Malformed rings or descriptor chains refused (the device then needs a reset).", s.Stats.BadChains.Load),
		counter(MetricShmemMaps, "SHMEM_MAP requests sent successfully.", s.Stats.ShmemMaps.Load),
	}
}
