package kv

// Hard caps enforced by Apply and Read. They are constants, not
// configuration, because every replica must accept or refuse a command
// identically whatever its local settings; they sit well above any sensible
// configured limit and exist so that a command that slipped past the encoders
// still cannot make a replica store something unbounded.
const (
	HardMaxKeySize   = 64 << 10 // bytes
	HardMaxValueSize = 64 << 20 // bytes
	HardMaxBatchOps  = 1 << 14
)

// Caps on one scan response, so that a scan can never build an unbounded
// response. A scan that stops at a cap reports More=true.
const (
	// MaxScanLimit is the most entries one scan returns; a requested limit
	// of 0 or above it means MaxScanLimit.
	MaxScanLimit = 10000
	// MaxScanBytes bounds the encoded size of a scan response. The first
	// entry is always returned, even if it alone exceeds the budget, so that
	// a paginating client always makes progress; a response is therefore at
	// most max(MaxScanBytes, one entry) plus a few bytes.
	MaxScanBytes = 4 << 20
)

// Limits are the request-size limits enforced by the encoders, where a
// request enters the cluster. They are configurable per node, which is safe
// only because Apply does not depend on them.
type Limits struct {
	MaxKeySize   int // bytes; keys must also be non-empty
	MaxValueSize int // bytes
	MaxBatchOps  int // ops in one Batch
}

// Default limits.
const (
	DefaultMaxKeySize   = 4 << 10
	DefaultMaxValueSize = 1 << 20
	DefaultMaxBatchOps  = 1024
)

// DefaultLimits returns 4 KiB keys, 1 MiB values and 1024 ops per batch.
func DefaultLimits() Limits {
	return Limits{
		MaxKeySize:   DefaultMaxKeySize,
		MaxValueSize: DefaultMaxValueSize,
		MaxBatchOps:  DefaultMaxBatchOps,
	}
}

// effective returns l with every non-positive field replaced by its default
// and every field lowered to its hard cap: a request that Apply would refuse
// is refused at encoding time instead, with a clearer error.
func (l Limits) effective() Limits {
	return Limits{
		MaxKeySize:   clampLimit(l.MaxKeySize, DefaultMaxKeySize, HardMaxKeySize),
		MaxValueSize: clampLimit(l.MaxValueSize, DefaultMaxValueSize, HardMaxValueSize),
		MaxBatchOps:  clampLimit(l.MaxBatchOps, DefaultMaxBatchOps, HardMaxBatchOps),
	}
}

func clampLimit(v, def, hard int) int {
	if v <= 0 {
		return def
	}
	return min(v, hard)
}
