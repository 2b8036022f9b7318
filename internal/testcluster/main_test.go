package testcluster

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test stops its cluster; no goroutine may outlive it.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
