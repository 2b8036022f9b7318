package kv

import (
	"bytes"
	"errors"
	"slices"
	"sort"

	"github.com/nodedb/nodedb-cluster/statemachine"
)

// memStore is an in-memory, ordered statemachine.Writer for tests. Scan
// hands the callback scratch copies that it clobbers afterwards, so code
// that keeps a callback slice past the callback fails the tests.
type memStore struct {
	keys []string // sorted
	vals map[string][]byte
}

var _ statemachine.Writer = (*memStore)(nil)

func newMemStore() *memStore { return &memStore{vals: map[string][]byte{}} }

func (s *memStore) Get(key []byte) ([]byte, error) {
	v, ok := s.vals[string(key)]
	if !ok {
		return nil, statemachine.ErrNotFound
	}
	return bytes.Clone(v), nil
}

func (s *memStore) Scan(start, end []byte, fn func(key, value []byte) bool) error {
	i := sort.SearchStrings(s.keys, string(start))
	var kbuf, vbuf []byte
	for ; i < len(s.keys); i++ {
		k := s.keys[i]
		if end != nil && k >= string(end) {
			break
		}
		kbuf = append(kbuf[:0], k...)
		vbuf = append(vbuf[:0], s.vals[k]...)
		cont := fn(kbuf, vbuf)
		for j := range kbuf {
			kbuf[j] = 0xAA
		}
		for j := range vbuf {
			vbuf[j] = 0xAA
		}
		if !cont {
			break
		}
	}
	return nil
}

func (s *memStore) Set(key, value []byte) error {
	k := string(key)
	if _, ok := s.vals[k]; !ok {
		i, _ := slices.BinarySearch(s.keys, k)
		s.keys = slices.Insert(s.keys, i, k)
	}
	s.vals[k] = bytes.Clone(value)
	return nil
}

func (s *memStore) Delete(key []byte) error {
	k := string(key)
	if _, ok := s.vals[k]; !ok {
		return nil
	}
	i, _ := slices.BinarySearch(s.keys, k)
	s.keys = slices.Delete(s.keys, i, i+1)
	delete(s.vals, k)
	return nil
}

// snapshot returns a copy of every stored key and raw value.
func (s *memStore) snapshot() map[string]string {
	out := make(map[string]string, len(s.vals))
	for k, v := range s.vals {
		out[k] = string(v)
	}
	return out
}

var errDisk = errors.New("disk on fire")

// faultyStore fails every operation of the kinds listed in failOn.
type faultyStore struct {
	*memStore
	failGet, failSet, failDelete, failScan bool
}

func (f *faultyStore) Get(key []byte) ([]byte, error) {
	if f.failGet {
		return nil, errDisk
	}
	return f.memStore.Get(key)
}

func (f *faultyStore) Scan(start, end []byte, fn func(key, value []byte) bool) error {
	if f.failScan {
		return errDisk
	}
	return f.memStore.Scan(start, end, fn)
}

func (f *faultyStore) Set(key, value []byte) error {
	if f.failSet {
		return errDisk
	}
	return f.memStore.Set(key, value)
}

func (f *faultyStore) Delete(key []byte) error {
	if f.failDelete {
		return errDisk
	}
	return f.memStore.Delete(key)
}
