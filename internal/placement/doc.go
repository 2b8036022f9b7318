// Package placement decides where groups' replicas live. Every decision is
// a pure function of plain data, so that any node computes the same answer
// and tests need no cluster:
//
//   - Static: the fixed layout of a cluster whose shape is known up front;
//   - Plan: the repair steps the metadata leader takes from the metadata
//     state (learners where voters are missing, promotion once caught up,
//     a metadata replica on every active node);
//   - Rebalance: replica moves that spread groups over zones and even out
//     the replicas per node, once Plan has nothing left to do.
//
// The rules are in docs/metadata.md.
package placement
