package meta

// Limits on what the metadata group accepts. They are checked before a
// decoder allocates and again by Apply, so no input can make the state grow
// without bound in one step or make a replica allocate more than the limit.
const (
	// FormatVersion is the State's format_version once bootstrapped.
	FormatVersion = 1
	// EntryVersion is the only Entry version this code applies.
	EntryVersion = 1
	// MaxEntryBytes bounds one encoded entry (a Batch included).
	MaxEntryBytes = 1 << 20
	// MaxStateBytes bounds the encoded state; an entry that would grow the
	// state past it is refused with ErrTooLarge.
	MaxStateBytes = 64 << 20
	// MaxResultBytes bounds an encoded result.
	MaxResultBytes = 64 << 10
	// MaxStringBytes bounds every identifier, address, zone and phase name.
	MaxStringBytes = 256
	// HashBytes is the length of the SHA-256 hashes tokens carry.
	HashBytes = 32

	// MinVShards and MaxVShards bound the vShard count (a power of two).
	MinVShards = 16
	MaxVShards = 16384
	// MaxReplicationFactor bounds a data group's voters.
	MaxReplicationFactor = 7
	// DefaultMetaVotersMax is the metadata group's voter bound when the
	// settings leave it 0.
	DefaultMetaVotersMax = 5
	// MaxMetaVoters bounds settings.meta_voters_max.
	MaxMetaVoters = 15

	// maxMessageBytes bounds the message of a Result: results are kept by
	// the host for exactly-once retries, so they stay small.
	maxMessageBytes = 512
)
