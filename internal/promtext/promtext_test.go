package promtext

import (
	"strings"
	"testing"
)

func TestSum(t *testing.T) {
	text := `# HELP x help
# TYPE etcd_disk_wal_fsync_duration_seconds histogram
etcd_disk_wal_fsync_duration_seconds_bucket{le="0.001"} 3
etcd_disk_wal_fsync_duration_seconds_count 120
etcd_disk_wal_fsync_duration_seconds_count_other 7
nodedb_storage_wal_syncs_total{node="1"} 5.5e+01 1700000000000
nodedb_storage_wal_syncs_total{node="2"} 45
`
	for name, want := range map[string]float64{
		"etcd_disk_wal_fsync_duration_seconds_count": 120,
		"nodedb_storage_wal_syncs_total":             100,
	} {
		got, found, err := Sum(strings.NewReader(text), name)
		if err != nil || !found || got != want {
			t.Errorf("%s: %v %v %v, want %v", name, got, found, err, want)
		}
	}
	if _, found, _ := Sum(strings.NewReader(text), "absent_total"); found {
		t.Error("found an absent metric")
	}
	if _, _, err := Sum(strings.NewReader("bad_total{x=\"1\"}\n"), "bad_total"); err == nil {
		t.Error("a sample without a value parsed")
	}
}
