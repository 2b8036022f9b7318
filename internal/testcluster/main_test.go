package testcluster

import (
	"testing"

	"github.com/nodedb/nodedb-cluster/internal/testwatch"
)

// Every test stops its cluster; no goroutine may outlive it.
func TestMain(m *testing.M) { testwatch.Main(m) }
