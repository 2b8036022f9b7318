package tcpnet

import "github.com/nodedb/nodedb-cluster/internal/transport"

// Stats are the endpoint's counters, the transports' common ones
// (exported under the same names as quicnet's when a Registerer is set).
type Stats = transport.Stats
