package cluster

import "github.com/cockroachdb/pebble/v2"

var syncWrite = pebble.Sync
