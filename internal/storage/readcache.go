package storage

import (
	"sync"
	"sync/atomic"
)

// ReadCache serves client reads of one group's vShard user areas from memory.
// Under a read-heavy load the Pebble point read behind every client read (a
// search of the memtable skiplists, then of the tables) was about a sixth of
// a node's CPU; a key read recently is found here in a map instead.
//
// What a read may return: a linearizable read is released once the durable
// applied index has reached its read index, and must then see the state at
// that index or later, and never a state older than one another read has
// already seen. Reads straight from Pebble give that, because a committed
// apply batch is visible to every later read. The cache gives the same by
// never holding a value that Pebble has replaced:
//
//   - A key's entry is dropped before the apply batch that writes it commits
//     (BeginCommit), and no entry is filled while any batch is committing:
//     a reader that missed may have read Pebble on either side of the
//     commit. EndCommit, called once the batch has committed, ends that.
//   - A reader fills the entry it missed only if no commit began or ended
//     since its lookup (a generation counter): its value may predate a
//     commit otherwise.
//   - Writes to the user areas that do not go through a VShardWriter that
//     tracks this cache (snapshot install, vShard import) drop every entry
//     in the same way (TouchAll or Clear).
//
// Between BeginCommit and EndCommit the untouched keys are still served:
// the batch does not change them. The applied index that releases reads
// moves only after EndCommit.
//
// Memory is bounded like ValueCache's (see generations). Lookups and fills
// are safe for concurrent use; Touch, TouchAll, BeginCommit and EndCommit
// belong to the apply path, which serialises them (the replica's worker);
// Clear may be called from anywhere.
type ReadCache struct {
	mu      sync.Mutex
	gen     uint64 // bumped by every BeginCommit, EndCommit and Clear
	writing int    // commits begun and not ended
	gens    generations
	// hits and misses, when set (CountInto), count lookups.
	hits, misses *atomic.Uint64

	// The apply path's keys written by the batch being built, concatenated
	// (ends[i] is where key i ends), and whether the batch rewrites the user
	// areas wholesale.
	touched    []byte
	ends       []int
	touchedAll bool
	// committing counts the BeginCommit calls of the batch in flight that
	// EndCommit must match (0 or 1).
	committing int
}

// NewReadCache returns a cache holding about maxBytes of keys and values.
func NewReadCache(maxBytes int) *ReadCache {
	return &ReadCache{gens: generations{maxBytes: maxBytes}}
}

// CountInto makes the cache count its lookups' hits and misses in the given
// counters (shared by a node's caches).
func (c *ReadCache) CountInto(hits, misses *atomic.Uint64) { c.hits, c.misses = hits, misses }

// lookup returns key's cached value, or the generation a fill after a read of
// Pebble must present.
func (c *ReadCache) lookup(key []byte) (v cachedValue, hit bool, gen uint64) {
	c.mu.Lock()
	v, hit = c.gens.get(key)
	gen = c.gen
	c.mu.Unlock()
	switch {
	case hit && c.hits != nil:
		c.hits.Add(1)
	case !hit && c.misses != nil:
		c.misses.Add(1)
	}
	return v, hit, gen
}

// fill caches v, read from Pebble after a lookup that returned gen, unless a
// commit or a clear began or ended since.
func (c *ReadCache) fill(key []byte, v cachedValue, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.writing != 0 || c.gen != gen {
		return
	}
	c.gens.put(key, v)
}

// Touch records that the batch being built writes key.
func (c *ReadCache) Touch(key []byte) {
	if c == nil || c.touchedAll {
		return
	}
	c.touched = append(c.touched, key...)
	c.ends = append(c.ends, len(c.touched))
}

// TouchAll records that the batch being built changes the user areas other
// than key by key (a range deletion, an import).
func (c *ReadCache) TouchAll() {
	if c == nil {
		return
	}
	c.touchedAll = true
	c.touched, c.ends = c.touched[:0], c.ends[:0]
}

// BeginCommit is called before the batch holding the touched keys commits:
// it drops their entries and stops fills until EndCommit. It does nothing if
// the batch touched nothing.
func (c *ReadCache) BeginCommit() {
	if c == nil || (!c.touchedAll && len(c.ends) == 0) {
		return
	}
	c.mu.Lock()
	c.beginWriteLocked()
	if c.touchedAll {
		c.gens.clear()
	} else {
		start := 0
		for _, end := range c.ends {
			c.gens.del(c.touched[start:end])
			start = end
		}
	}
	c.mu.Unlock()
	c.committing++
	c.touched, c.ends, c.touchedAll = c.touched[:0], c.ends[:0], false
}

// EndCommit is called once the batch has committed (after BeginCommit, which
// it matches; without one it does nothing).
func (c *ReadCache) EndCommit() {
	if c == nil || c.committing == 0 {
		return
	}
	c.committing--
	c.endWrite()
}

// Clear drops every entry and every fill in progress. Call it before a write
// to the user areas that bypasses the apply path; EndClear after it.
func (c *ReadCache) Clear() {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.beginWriteLocked()
	c.gens.clear()
	c.mu.Unlock()
}

// EndClear ends the write that Clear began.
func (c *ReadCache) EndClear() {
	if c == nil {
		return
	}
	c.endWrite()
}

// beginWriteLocked refuses fills until the matching endWrite, and those of
// lookups made before it for good. Caller holds c.mu.
func (c *ReadCache) beginWriteLocked() {
	c.gen++
	c.writing++
}

// endWrite ends a write begun by beginWriteLocked; lookups made during the
// write still cannot fill.
func (c *ReadCache) endWrite() {
	c.mu.Lock()
	c.gen++
	c.writing--
	c.mu.Unlock()
}

// Resize changes the bound to about maxBytes, dropping entries if the cache
// holds more than the new bound allows (forgetting is always safe). Safe for
// concurrent use.
func (c *ReadCache) Resize(maxBytes int) {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.gens.resize(maxBytes)
	c.mu.Unlock()
}

// MaxBytes returns the cache's bound.
func (c *ReadCache) MaxBytes() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gens.maxBytes
}

// Len returns the number of cached keys (for tests and metrics).
func (c *ReadCache) Len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gens.len()
}
