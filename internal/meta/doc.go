// Package meta is the pure core of the metadata group (group 0): its state,
// its log entries, the function that applies an entry to a state, and the
// state machine adaptor the multi-Raft host runs for group 0.
//
// Every change to the cluster's topology or routing is an Entry proposed to
// group 0 and applied, identically and in log order, on every replica. That
// is the only way the State changes, so every node that has applied the same
// prefix of the log holds the same State byte for byte. Three rules keep it
// so, and the tests check each:
//
//   - Apply is a pure function of (state, entry, timestamp): it never reads a
//     clock, a random source, a map's iteration order or anything outside
//     its arguments. The only time is the proposer's timestamp carried in
//     the log entry, so expiry decisions are the same everywhere.
//   - Apply never mutates its input and never panics: a refused entry leaves
//     the state exactly as it was and returns a typed *Error, identically on
//     every replica, and the log moves on.
//   - Encoding is deterministic (sorted map keys), so equal states encode to
//     equal bytes and replicas can be compared by hash.
//
// The rules of every entry are in docs/metadata.md.
package meta
