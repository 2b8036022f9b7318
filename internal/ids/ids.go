// Package ids defines the identifiers shared by every layer. They are distinct
// types because mixing them up is a real bug class in multi-Raft systems: a
// Raft peer ID is a ReplicaID, unique within its group and never reused, not
// the NodeID of the process that hosts it.
package ids

import "strconv"

// NodeID identifies a node (a process with a data dir). Assigned once, never
// reused: a wiped data dir comes back as a new node.
type NodeID uint64

// GroupID identifies a Raft group. Group 0 is reserved for cluster metadata.
type GroupID uint64

// ReplicaID identifies one replica of one group; it is the Raft peer ID inside
// that group. A replica removed from a group and later re-added gets a new
// ReplicaID, so delayed messages addressed to the old incarnation can never be
// mistaken for messages to the new one.
type ReplicaID uint64

func (n NodeID) String() string    { return "n" + strconv.FormatUint(uint64(n), 10) }
func (g GroupID) String() string   { return "g" + strconv.FormatUint(uint64(g), 10) }
func (r ReplicaID) String() string { return "r" + strconv.FormatUint(uint64(r), 10) }

// MetaGroup is the group that holds cluster metadata.
const MetaGroup GroupID = 0
