package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"iter"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// WriteResult is the result of an applied write.
type WriteResult struct {
	// Version is the key's version after the write (0 after a delete).
	Version uint64
	// VShard is the key's vShard.
	VShard uint32
	// PrevVersion is the key's version before the write (0: absent).
	PrevVersion uint64
}

// GetResult is a key read.
type GetResult struct {
	Value   []byte
	Version uint64
	VShard  uint32
}

// Item is one key of a scan.
type Item struct {
	Key     []byte
	Value   []byte
	Version uint64
	VShard  uint32
}

// Page is one page of a scan; Cursor is empty once the scan is complete.
type Page struct {
	Items  []Item
	Cursor string
}

type writeOptions struct {
	ifVersion *uint64
	idem      string
}

// WriteOption shapes a write.
type WriteOption func(*writeOptions)

// WithIfVersion makes the write conditional: it applies only if the key's
// current version is v, and v = 0 means the key must be absent. A failed
// condition is ErrConflict, with the current version in
// (*Error).CurrentVersion.
func WithIfVersion(v uint64) WriteOption {
	return func(o *writeOptions) { o.ifVersion = &v }
}

// WithIdempotencyKey identifies the write by k (at most 256 bytes) instead
// of the client's own exactly-once identity: the first write with k is
// applied and every later one (from any client, until the cluster forgets
// k) gets the first result and applies nothing.
func WithIdempotencyKey(k string) WriteOption {
	return func(o *writeOptions) { o.idem = k }
}

type readOptions struct {
	stale time.Duration
}

// ReadOption shapes a read.
type ReadOption func(*readOptions)

// WithStale makes the read a stale read: it may be served by any voter of
// the key's group (the client spreads them round-robin), and reflects every
// write acknowledged more than maxStaleness (at least 1ms) before it. The
// default is linearizable: served by the leader, reflecting every write
// acknowledged before the read started.
func WithStale(maxStaleness time.Duration) ReadOption {
	return func(o *readOptions) { o.stale = maxStaleness }
}

// query returns the read's query parameters, nil for a linearizable read.
func (o readOptions) query() url.Values {
	if o.stale <= 0 {
		return nil
	}
	return url.Values{"consistency": {"stale"}, "max_staleness": {o.stale.String()}}
}

// Put writes value at key.
func (c *Client) Put(ctx context.Context, key, value []byte, opts ...WriteOption) (WriteResult, error) {
	if value == nil {
		value = []byte{}
	}
	return c.write(ctx, http.MethodPut, key, value, opts)
}

// Delete removes key; ErrNotFound when it is absent.
func (c *Client) Delete(ctx context.Context, key []byte, opts ...WriteOption) (WriteResult, error) {
	return c.write(ctx, http.MethodDelete, key, nil, opts)
}

func (c *Client) write(ctx context.Context, method string, key, value []byte, opts []WriteOption) (WriteResult, error) {
	var o writeOptions
	for _, f := range opts {
		f(&o)
	}
	p, err := keyPath(key)
	if err != nil {
		return WriteResult{}, err
	}
	r := &request{method: method, path: p, key: key, body: value, write: true, idem: o.idem}
	if o.ifVersion != nil {
		r.query = url.Values{"if_version": {strconv.FormatUint(*o.ifVersion, 10)}}
	}
	resp, err := c.do(ctx, r)
	if err != nil {
		return WriteResult{}, err
	}
	w, err := decodeWriteResult(resp.body)
	if err != nil {
		return WriteResult{}, &Error{Code: CodeInternal, Message: fmt.Sprintf("decode write answer %q: %v", resp.body, err), Status: resp.status}
	}
	return w, nil
}

// decodeWriteResult decodes a write's JSON answer. A node writes it as
// {"version":V,"vshard":S,"prev_version":P}, which is read here without
// reflection; anything else (another field order, spaces, more fields)
// goes to encoding/json.
func decodeWriteResult(b []byte) (WriteResult, error) {
	var w WriteResult
	rest, ok := bytes.CutPrefix(b, []byte(`{"version":`))
	var v uint64
	if ok {
		v, rest, ok = cutUint(rest, 64)
		w.Version = v
	}
	if ok {
		rest, ok = bytes.CutPrefix(rest, []byte(`,"vshard":`))
	}
	if ok {
		v, rest, ok = cutUint(rest, 32)
		w.VShard = uint32(v)
	}
	if ok {
		rest, ok = bytes.CutPrefix(rest, []byte(`,"prev_version":`))
	}
	if ok {
		w.PrevVersion, rest, ok = cutUint(rest, 64)
	}
	if ok {
		rest, ok = bytes.CutPrefix(rest, []byte("}"))
	}
	if ok && len(bytes.TrimSpace(rest)) == 0 {
		return w, nil
	}
	var j struct {
		Version     uint64 `json:"version"`
		VShard      uint32 `json:"vshard"`
		PrevVersion uint64 `json:"prev_version"`
	}
	if err := json.Unmarshal(b, &j); err != nil {
		return WriteResult{}, err
	}
	return WriteResult{Version: j.Version, VShard: j.VShard, PrevVersion: j.PrevVersion}, nil
}

// cutUint parses the decimal digits at the start of b as an unsigned
// integer of the given bit size.
func cutUint(b []byte, bits int) (uint64, []byte, bool) {
	n := 0
	for n < len(b) && b[n] >= '0' && b[n] <= '9' {
		n++
	}
	if n == 0 {
		return 0, b, false
	}
	v, err := strconv.ParseUint(string(b[:n]), 10, bits)
	if err != nil {
		return 0, b, false
	}
	return v, b[n:], true
}

// Get reads key; ErrNotFound when it is absent.
func (c *Client) Get(ctx context.Context, key []byte, opts ...ReadOption) (GetResult, error) {
	var o readOptions
	for _, f := range opts {
		f(&o)
	}
	p, err := keyPath(key)
	if err != nil {
		return GetResult{}, err
	}
	r := &request{method: http.MethodGet, path: p, key: key, stale: o.stale > 0, query: o.query()}
	resp, err := c.do(ctx, r)
	if err != nil {
		return GetResult{}, err
	}
	ver, err1 := strconv.ParseUint(resp.header.Get(headerVersion), 10, 64)
	vs, err2 := strconv.ParseUint(resp.header.Get(headerVShard), 10, 32)
	if err1 != nil || err2 != nil {
		return GetResult{}, &Error{Code: CodeInternal, Message: fmt.Sprintf("get answer without version or vshard headers: %v", resp.header), Status: resp.status}
	}
	return GetResult{Value: resp.body, Version: ver, VShard: uint32(vs)}, nil
}

// ScanPage returns one page of up to limit keys starting with prefix (0:
// the cluster's default of 100; at most 1000), from cursor on ("" for the
// first page). Items come in (vShard, key) order.
func (c *Client) ScanPage(ctx context.Context, prefix []byte, cursor string, limit int, opts ...ReadOption) (Page, error) {
	var o readOptions
	for _, f := range opts {
		f(&o)
	}
	q := o.query()
	if q == nil {
		q = url.Values{}
	}
	if len(prefix) > 0 {
		q.Set("prefix", string(prefix))
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if cursor != "" {
		q.Set("cursor", cursor)
	}
	r := &request{method: http.MethodGet, path: "/v1/kv", vs: -1, stale: o.stale > 0, query: q}
	if tag, ok := prefixHashKey(prefix); ok {
		// Every key with this prefix is in the tag's vShard: go to its
		// group.
		r.key = tag
	}
	resp, err := c.do(ctx, r)
	if err != nil {
		return Page{}, err
	}
	var ans struct {
		Items []struct {
			Key         string `json:"key"`
			Value       string `json:"value"`
			ValueBase64 []byte `json:"value_base64"`
			Version     uint64 `json:"version"`
			VShard      uint32 `json:"vshard"`
		} `json:"items"`
		Cursor string `json:"cursor"`
	}
	if err := json.Unmarshal(resp.body, &ans); err != nil {
		return Page{}, &Error{Code: CodeInternal, Message: fmt.Sprintf("decode scan page: %v", err), Status: resp.status}
	}
	page := Page{Items: make([]Item, 0, len(ans.Items)), Cursor: ans.Cursor}
	for _, it := range ans.Items {
		v := []byte(it.Value)
		if it.ValueBase64 != nil {
			v = it.ValueBase64
		}
		page.Items = append(page.Items, Item{Key: []byte(it.Key), Value: v, Version: it.Version, VShard: it.VShard})
	}
	return page, nil
}

// Scan returns every key starting with prefix, page by page (pageSize keys
// a request; 0: the cluster's default), in (vShard, key) order. It stops at
// the first error, which it yields. A scan never returns a key twice and
// never skips one that existed for the whole scan.
//
//	for it, err := range c.Scan(ctx, []byte("user:"), 100) {
//		if err != nil { ... }
//		fmt.Printf("%s=%s\n", it.Key, it.Value)
//	}
func (c *Client) Scan(ctx context.Context, prefix []byte, pageSize int, opts ...ReadOption) iter.Seq2[Item, error] {
	return func(yield func(Item, error) bool) {
		cursor := ""
		for {
			page, err := c.ScanPage(ctx, prefix, cursor, pageSize, opts...)
			if err != nil {
				yield(Item{}, err)
				return
			}
			for _, it := range page.Items {
				if !yield(it, nil) {
					return
				}
			}
			if page.Cursor == "" || page.Cursor == cursor {
				return
			}
			cursor = page.Cursor
		}
	}
}

// prefixHashKey returns the hash tag part of a prefix that holds a complete
// non-empty hash tag ("{user1}..."): every key with the prefix hashes as
// it does.
func prefixHashKey(prefix []byte) ([]byte, bool) {
	open := bytes.IndexByte(prefix, '{')
	if open < 0 {
		return nil, false
	}
	end := bytes.IndexByte(prefix[open+1:], '}')
	if end <= 0 {
		return nil, false
	}
	return prefix[:open+1+end+1], true
}

// keyPath is the escaped REST path of key: every byte outside [A-Za-z0-9-._~]
// is percent-encoded (so "/" stays inside the one path segment), and so are
// the dots of "." and "..", which a server would clean away.
func keyPath(key []byte) (string, error) {
	if len(key) == 0 {
		return "", invalidArg("empty key")
	}
	const hex = "0123456789ABCDEF"
	dots := string(key) == "." || string(key) == ".."
	b := make([]byte, 0, len("/v1/kv/")+3*len(key))
	b = append(b, "/v1/kv/"...)
	for _, c := range key {
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '~' || c == '.' && !dots {
			b = append(b, c)
			continue
		}
		b = append(b, '%', hex[c>>4], hex[c&15])
	}
	return string(b), nil
}
