package meta

import (
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
	"google.golang.org/protobuf/proto"
)

// marshal is deterministic: map entries in key order, so equal states give
// equal bytes on every replica and every build.
var marshal = proto.MarshalOptions{Deterministic: true}

// EncodeEntry encodes an entry for proposal. It refuses what Apply would
// refuse on its own (see validateEntry) and entries over MaxEntryBytes, so a
// proposer learns of its own mistakes without a round trip through the log.
func EncodeEntry(e *metapb.Entry) ([]byte, error) {
	if err := validateEntry(e, false); err != nil {
		return nil, wrap(err, "encode entry")
	}
	b, err := marshal.Marshal(e)
	if err != nil {
		return nil, errorf(metapb.Code_CODE_MALFORMED, "encode entry: %v", err)
	}
	if len(b) > MaxEntryBytes {
		return nil, errorf(metapb.Code_CODE_TOO_LARGE, "encode entry: %d bytes, at most %d", len(b), MaxEntryBytes)
	}
	return b, nil
}

// DecodeEntry decodes and validates a proposed entry. The size is checked
// before anything is allocated.
func DecodeEntry(b []byte) (*metapb.Entry, error) {
	if len(b) > MaxEntryBytes {
		return nil, errorf(metapb.Code_CODE_TOO_LARGE, "decode entry: %d bytes, at most %d", len(b), MaxEntryBytes)
	}
	e := &metapb.Entry{}
	if err := proto.Unmarshal(b, e); err != nil {
		return nil, errorf(metapb.Code_CODE_MALFORMED, "decode entry: %v", err)
	}
	if err := validateEntry(e, false); err != nil {
		return nil, wrap(err, "decode entry")
	}
	return e, nil
}

// EncodeState encodes a state. It does not validate: Apply keeps the
// invariants, and DecodeState checks them on the way back in.
func EncodeState(st *metapb.State) ([]byte, error) {
	b, err := marshal.Marshal(st)
	if err != nil {
		return nil, errorf(metapb.Code_CODE_MALFORMED, "encode state: %v", err)
	}
	if len(b) > MaxStateBytes {
		return nil, errorf(metapb.Code_CODE_TOO_LARGE, "encode state: %d bytes, at most %d", len(b), MaxStateBytes)
	}
	return b, nil
}

// DecodeState decodes and validates a state. Empty input is the empty
// (not yet bootstrapped) state.
func DecodeState(b []byte) (*metapb.State, error) {
	if len(b) > MaxStateBytes {
		return nil, errorf(metapb.Code_CODE_TOO_LARGE, "decode state: %d bytes, at most %d", len(b), MaxStateBytes)
	}
	st := &metapb.State{}
	if err := proto.Unmarshal(b, st); err != nil {
		return nil, errorf(metapb.Code_CODE_MALFORMED, "decode state: %v", err)
	}
	if err := validateState(st); err != nil {
		return nil, wrap(err, "decode state")
	}
	return st, nil
}

// EncodeResult encodes a result for the proposer. Results are small by
// construction (messages are clipped), so this cannot fail.
func EncodeResult(res *metapb.Result) []byte {
	b, err := marshal.Marshal(res)
	if err != nil {
		b, _ = marshal.Marshal(&metapb.Result{Code: metapb.Code_CODE_INTERNAL, Message: "result does not encode"})
	}
	return b
}

// DecodeResult decodes a result returned by the metadata state machine.
func DecodeResult(b []byte) (*metapb.Result, error) {
	if len(b) > MaxResultBytes {
		return nil, errorf(metapb.Code_CODE_TOO_LARGE, "decode result: %d bytes, at most %d", len(b), MaxResultBytes)
	}
	res := &metapb.Result{}
	if err := proto.Unmarshal(b, res); err != nil {
		return nil, errorf(metapb.Code_CODE_MALFORMED, "decode result: %v", err)
	}
	return res, nil
}
