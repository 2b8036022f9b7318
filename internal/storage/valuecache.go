package storage

// ValueCache mirrors, write-through, the values of a group's vShard user
// areas that its apply path has read or written. State machines read before
// they write (the KV store reads every key's version to compute the next
// one); with the cache, a key written recently is found in a map instead of
// by a search through Pebble's memtables and tables, which cost about a
// sixth of a node's CPU under a write-heavy load.
//
// Invariant: an entry holds exactly what the apply batch holds for its key.
// That holds because every write to a user area goes either through a
// VShardWriter that shares the cache (which updates it with the batch) or
// through the host's own paths (snapshot install, vShard import, replica
// removal), which must call Clear. A batch that fails to commit stops the
// node, so the cache never runs ahead of durable state in a node that keeps
// serving. Only the apply path reads it; reads served to clients go to
// Pebble.
//
// Memory is bounded by two generations of at most maxBytes/2 each: when the
// current one fills, it becomes the previous one and the oldest is dropped,
// an approximation of LRU that needs no per-entry bookkeeping. Not safe for
// concurrent use; its owner (a replica) serialises access.
type ValueCache struct {
	cur, prev map[string]cachedValue
	curBytes  int
	maxBytes  int
}

type cachedValue struct {
	val     []byte
	present bool // false: the key is known to be absent
}

// cachedEntryOverhead approximates a map entry's bookkeeping in bytes.
const cachedEntryOverhead = 64

// NewValueCache returns a cache holding about maxBytes of keys and values.
func NewValueCache(maxBytes int) *ValueCache {
	return &ValueCache{maxBytes: maxBytes}
}

// Clear drops everything; call it whenever a user area changes other than
// through a VShardWriter using this cache.
func (c *ValueCache) Clear() {
	if c == nil {
		return
	}
	c.cur, c.prev, c.curBytes = nil, nil, 0
}

// Len returns the number of cached keys (for tests and metrics).
func (c *ValueCache) Len() int {
	if c == nil {
		return 0
	}
	return len(c.cur) + len(c.prev)
}

func (c *ValueCache) get(key []byte) (cachedValue, bool) {
	if v, ok := c.cur[string(key)]; ok {
		return v, true
	}
	if v, ok := c.prev[string(key)]; ok {
		c.put(key, v) // promote: it is in use
		return v, true
	}
	return cachedValue{}, false
}

func (c *ValueCache) put(key []byte, v cachedValue) {
	size := len(key) + len(v.val) + cachedEntryOverhead
	if size > c.maxBytes/2 {
		// Larger than a generation: keeping it would evict everything else.
		delete(c.cur, string(key))
		delete(c.prev, string(key))
		return
	}
	if c.cur == nil {
		c.cur = make(map[string]cachedValue)
	}
	if old, ok := c.cur[string(key)]; ok {
		c.curBytes -= len(key) + len(old.val) + cachedEntryOverhead
	} else if c.curBytes+size > c.maxBytes/2 {
		c.prev, c.cur, c.curBytes = c.cur, make(map[string]cachedValue, len(c.cur)), 0
	}
	// A stale copy in prev must not be found after cur rotates away.
	delete(c.prev, string(key))
	c.cur[string(key)] = v
	c.curBytes += size
}
