package server

import (
	"maps"
	"testing"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// The join peers survive cluster.json: written as the join answer named
// them, read back the same; a malformed entry is refused with a clear error.
func TestJoinPeersRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s := &Server{id: 3, clusterID: "c", vshards: 64, cfg: Config{Listen: "127.0.0.1:1"},
		joinPeers: map[ids.NodeID]string{1: "127.0.0.1:7401", 2: "127.0.0.1:7402"}}
	if err := writeStored(dir, s.stored()); err != nil {
		t.Fatal(err)
	}
	st, err := readStored(dir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseJoinPeers(st.JoinPeers)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got, s.joinPeers) {
		t.Fatalf("join peers %v, want %v", got, s.joinPeers)
	}
	for _, bad := range []map[string]string{{"x": "127.0.0.1:1"}, {"0": "127.0.0.1:1"}, {"2": ""}} {
		if _, err := parseJoinPeers(bad); err == nil {
			t.Fatalf("join peers %v accepted", bad)
		}
	}
	// A founder (no join) writes none.
	s.joinPeers = nil
	if st := s.stored(); st.JoinPeers != nil {
		t.Fatalf("founder stores join peers %v", st.JoinPeers)
	}
}
