package raftstore

import (
	"testing"

	"github.com/nodedb/nodedb-cluster/internal/testwatch"
)

func TestMain(m *testing.M) { testwatch.Main(m) }
