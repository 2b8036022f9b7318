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
// Memory is bounded by two generations of at most maxBytes/2 each (see
// generations). Not safe for concurrent use; its owner (a replica)
// serialises access.
type ValueCache struct {
	gens generations
}

type cachedValue struct {
	val     []byte
	present bool // false: the key is known to be absent
}

// cachedEntryOverhead approximates a map entry's bookkeeping in bytes.
const cachedEntryOverhead = 64

// NewValueCache returns a cache holding about maxBytes of keys and values.
func NewValueCache(maxBytes int) *ValueCache {
	return &ValueCache{gens: generations{maxBytes: maxBytes}}
}

// Clear drops everything; call it whenever a user area changes other than
// through a VShardWriter using this cache.
func (c *ValueCache) Clear() {
	if c == nil {
		return
	}
	c.gens.clear()
}

// Resize changes the bound to about maxBytes, dropping entries if the cache
// holds more than the new bound allows. The host calls it (through the
// replica's owner) when the node's budget is shared over more or fewer
// replicas.
func (c *ValueCache) Resize(maxBytes int) {
	if c == nil {
		return
	}
	c.gens.resize(maxBytes)
}

// MaxBytes returns the cache's bound.
func (c *ValueCache) MaxBytes() int {
	if c == nil {
		return 0
	}
	return c.gens.maxBytes
}

// Len returns the number of cached keys (for tests and metrics).
func (c *ValueCache) Len() int {
	if c == nil {
		return 0
	}
	return c.gens.len()
}

func (c *ValueCache) get(key []byte) (cachedValue, bool) { return c.gens.get(key) }

func (c *ValueCache) put(key []byte, v cachedValue) { c.gens.put(key, v) }

// generations is the map behind ValueCache and ReadCache: at most maxBytes
// of keys and values in two generations of at most maxBytes/2 each. When the
// current one fills, it becomes the previous one and the oldest is dropped,
// an approximation of LRU that needs no per-entry bookkeeping. Not safe for
// concurrent use.
type generations struct {
	cur, prev           map[string]cachedValue
	curBytes, prevBytes int
	maxBytes            int
}

func (g *generations) clear() { g.cur, g.prev, g.curBytes, g.prevBytes = nil, nil, 0, 0 }

func (g *generations) len() int { return len(g.cur) + len(g.prev) }

// bytes returns the bytes held, as counted against maxBytes.
func (g *generations) bytes() int { return g.curBytes + g.prevBytes }

// resize sets the bound to maxBytes. Each generation must stay within half
// of it: the previous one is dropped if it does not, and both if the current
// one does not (a cache may always forget).
func (g *generations) resize(maxBytes int) {
	g.maxBytes = maxBytes
	switch {
	case g.curBytes > maxBytes/2:
		g.clear()
	case g.prevBytes > maxBytes/2:
		g.prev, g.prevBytes = nil, 0
	}
}

// get returns key's value, moving it to the current generation if it was in
// the previous one (it is in use).
func (g *generations) get(key []byte) (cachedValue, bool) {
	if v, ok := g.cur[string(key)]; ok {
		return v, true
	}
	if v, ok := g.prev[string(key)]; ok {
		g.put(key, v)
		return v, true
	}
	return cachedValue{}, false
}

// put sets key's value. A value larger than a generation is not kept (it
// would evict everything else), and any older one for the key is dropped.
func (g *generations) put(key []byte, v cachedValue) {
	size := len(key) + len(v.val) + cachedEntryOverhead
	if size > g.maxBytes/2 {
		g.del(key)
		return
	}
	if g.cur == nil {
		g.cur = make(map[string]cachedValue)
	}
	if old, ok := g.cur[string(key)]; ok {
		g.curBytes -= len(key) + len(old.val) + cachedEntryOverhead
		delete(g.cur, string(key))
	}
	if g.curBytes+size > g.maxBytes/2 {
		g.prev, g.prevBytes = g.cur, g.curBytes
		g.cur, g.curBytes = make(map[string]cachedValue, len(g.cur)), 0
	}
	// A stale copy in prev must not be found after cur rotates away.
	g.delPrev(key)
	g.cur[string(key)] = v
	g.curBytes += size
}

// del drops key.
func (g *generations) del(key []byte) {
	if old, ok := g.cur[string(key)]; ok {
		g.curBytes -= len(key) + len(old.val) + cachedEntryOverhead
		delete(g.cur, string(key))
	}
	g.delPrev(key)
}

func (g *generations) delPrev(key []byte) {
	if old, ok := g.prev[string(key)]; ok {
		g.prevBytes -= len(key) + len(old.val) + cachedEntryOverhead
		delete(g.prev, string(key))
	}
}
