// Package vshard maps keys to virtual shards (vShards).
//
// The mapping is Redis Cluster's slot function, bit for bit, so that any
// client that can route RESP traffic to a Redis Cluster can also compute which
// vShard owns a key:
//
//	hashkey = HashKey(key)                 // the {hash tag} if non-empty, else the whole key
//	slot    = CRC16-XMODEM(hashkey) % 16384
//	vshard  = slot >> (14 - log2(count))
//
// The vShard count is a power of two between 16 and 16384, fixed when the
// cluster is bootstrapped. Because a vShard is a contiguous range of slots,
// keys sharing a hash tag share a slot and therefore a vShard for every valid
// count; that is what makes multi-key atomic batches within one vShard
// possible ("{user1000}.following" and "{user1000}.followers" always land
// together).
//
// Every function here is pure, allocation-free and total: no input makes it
// panic.
package vshard

import (
	"errors"
	"fmt"
	"math/bits"
)

// Slots is the number of hash slots, as in Redis Cluster. Every valid vShard
// count divides it.
const Slots = 16384

// slotBits is log2(Slots).
const slotBits = 14

// Bounds and default of the vShard count.
const (
	MinCount     = 16
	MaxCount     = Slots
	DefaultCount = 1024
)

// ErrBadCount is wrapped by ValidateCount's error for a count that is not a
// power of two between MinCount and MaxCount.
var ErrBadCount = errors.New("vshard: count must be a power of two between 16 and 16384")

// ValidateCount reports whether v is a usable vShard count. Callers validate
// the count once, when it is configured; ForKey and ForSlot assume a valid
// count.
func ValidateCount(v int) error {
	if v < MinCount || v > MaxCount || v&(v-1) != 0 {
		return fmt.Errorf("%w: got %d", ErrBadCount, v)
	}
	return nil
}

// HashKey returns the part of key that is hashed: the bytes between the first
// '{' and the first '}' after it, when there is at least one byte between
// them; otherwise the whole key. This is Redis Cluster's keyHashSlot rule, so
// "foo{}{bar}" hashes as a whole (the first tag is empty) and "foo{{bar}}zap"
// hashes "{bar". The result aliases key.
func HashKey(key []byte) []byte {
	for s := 0; s < len(key); s++ {
		if key[s] != '{' {
			continue
		}
		for e := s + 1; e < len(key); e++ {
			if key[e] == '}' {
				if e == s+1 {
					return key // empty tag: hash the whole key
				}
				return key[s+1 : e]
			}
		}
		return key // '{' without a later '}'
	}
	return key
}

// Slot returns the Redis Cluster hash slot of key, in [0, Slots).
func Slot(key []byte) uint16 {
	return crc16(HashKey(key)) & (Slots - 1)
}

// ForKey returns the vShard that owns key when there are count vShards. The
// result is in [0, count) for a count accepted by ValidateCount. For any other
// count it does not panic: count is treated as the largest power of two not
// above it, clamped to [1, Slots].
func ForKey(key []byte, count int) uint32 {
	return ForSlot(Slot(key), count)
}

// ForSlot returns the vShard that owns slot when there are count vShards:
// vShard v owns the contiguous slot range [v*Slots/count, (v+1)*Slots/count).
// Invalid counts are handled as in ForKey, and slot is reduced mod Slots.
func ForSlot(slot uint16, count int) uint32 {
	return uint32(slot&(Slots-1)) >> shift(count)
}

// shift returns 14 - log2(count), with count clamped into [1, Slots] and
// rounded down to a power of two, so that the shift is always in [0, 14].
func shift(count int) uint {
	if count <= 1 {
		return slotBits
	}
	if count >= Slots {
		return 0
	}
	return slotBits - uint(bits.Len(uint(count))-1)
}
