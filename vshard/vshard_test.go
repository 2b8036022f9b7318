package vshard

import (
	"errors"
	"strconv"
	"testing"

	"pgregory.net/rapid"
)

// crc16Bitwise is an independent, table-free CRC16-XMODEM used to check the
// table-driven one.
func crc16Bitwise(b []byte) uint16 {
	var crc uint16
	for _, c := range b {
		crc ^= uint16(c) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// hashKeyRef is an independent reading of Redis's keyHashSlot (cluster.c):
// find the first '{'; if none, hash the whole key; find the first '}' after
// it; if none or nothing in between, hash the whole key.
func hashKeyRef(key string) string {
	s := -1
	for i := 0; i < len(key); i++ {
		if key[i] == '{' {
			s = i
			break
		}
	}
	if s < 0 {
		return key
	}
	e := -1
	for i := s + 1; i < len(key); i++ {
		if key[i] == '}' {
			e = i
			break
		}
	}
	if e < 0 || e == s+1 {
		return key
	}
	return key[s+1 : e]
}

func slotRef(key string) uint16 { return crc16Bitwise([]byte(hashKeyRef(key))) % Slots }

func TestCRC16CheckValue(t *testing.T) {
	if got := crc16([]byte("123456789")); got != 0x31C3 {
		t.Fatalf("crc16(123456789) = %#x, want 0x31C3", got)
	}
	if got := crc16Bitwise([]byte("123456789")); got != 0x31C3 {
		t.Fatalf("reference crc16(123456789) = %#x, want 0x31C3", got)
	}
	if got := crc16(nil); got != 0 {
		t.Fatalf("crc16(nil) = %#x, want 0", got)
	}
}

func TestSlot(t *testing.T) {
	// slot is the value Redis Cluster's CLUSTER KEYSLOT returns (literal
	// constants from Redis documentation and client test suites); sameAs, when
	// set, names a key that must hash identically.
	tests := []struct {
		key    string
		slot   int // -1: only compare with sameAs
		sameAs string
	}{
		{key: "foo", slot: 12182},
		{key: "bar", slot: 5061},
		{key: "hello", slot: 866},
		{key: "123456789", slot: 0x31C3 % Slots},
		{key: "simple-key", slot: 6985},
		{key: "foo{bar}zap", slot: 5061, sameAs: "bar"},
		{key: "{bar}zap", slot: 5061, sameAs: "bar"},
		{key: "foo{bar", slot: 15278},
		{key: "foo}bar", slot: 7223},
		{key: "a{tag}", slot: 8338, sameAs: "tag"},
		{key: "{user1000}.following", slot: -1, sameAs: "user1000"},
		{key: "{user1000}.followers", slot: -1, sameAs: "user1000"},
		{key: "foo{}{bar}", slot: 8363},                            // empty first tag: whole key
		{key: "foo{{bar}}zap", slot: 4015, sameAs: "{bar"},         // tag is "{bar"
		{key: "foo{bar}{zap}", slot: 5061, sameAs: "bar"},          // first tag wins
		{key: "{}", slot: int(crc16Bitwise([]byte("{}")) % Slots)}, // whole key
		{key: "{}bar", slot: -1},
		{key: "", slot: 0},
		{key: "{", slot: -1},
		{key: "}{", slot: -1},
	}
	for _, tc := range tests {
		got := Slot([]byte(tc.key))
		if want := slotRef(tc.key); got != want {
			t.Errorf("Slot(%q) = %d, reference implementation says %d", tc.key, got, want)
		}
		if tc.slot >= 0 && int(got) != tc.slot {
			t.Errorf("Slot(%q) = %d, want %d", tc.key, got, tc.slot)
		}
		if tc.sameAs != "" {
			if want := Slot([]byte(tc.sameAs)); got != want {
				t.Errorf("Slot(%q) = %d, want Slot(%q) = %d", tc.key, got, tc.sameAs, want)
			}
		}
	}
}

func TestHashKey(t *testing.T) {
	for _, tc := range []struct{ key, want string }{
		{"{user1000}.following", "user1000"},
		{"foo{}{bar}", "foo{}{bar}"},
		{"foo{{bar}}zap", "{bar"},
		{"foo{bar}{zap}", "bar"},
		{"{}", "{}"},
		{"{}bar", "{}bar"},
		{"foo{bar", "foo{bar"},
		{"foo}bar{", "foo}bar{"},
		{"{{}}", "{"},
		{"", ""},
	} {
		if got := string(HashKey([]byte(tc.key))); got != tc.want {
			t.Errorf("HashKey(%q) = %q, want %q", tc.key, got, tc.want)
		}
	}
}

func TestValidateCount(t *testing.T) {
	for _, v := range []int{16, 32, 1024, 16384} {
		if err := ValidateCount(v); err != nil {
			t.Errorf("ValidateCount(%d) = %v, want nil", v, err)
		}
	}
	for _, v := range []int{-16, 0, 1, 2, 8, 15, 17, 24, 1000, 16383, 32768, 1 << 40} {
		err := ValidateCount(v)
		if !errors.Is(err, ErrBadCount) {
			t.Errorf("ValidateCount(%d) = %v, want ErrBadCount", v, err)
		}
	}
}

func TestForSlot(t *testing.T) {
	for _, tc := range []struct {
		slot  uint16
		count int
		want  uint32
	}{
		{0, 16, 0},
		{1023, 16, 0},
		{1024, 16, 1},
		{16383, 16, 15},
		{16383, 1024, 1023},
		{12182, 1024, 12182 >> 4},
		{12182, 16384, 12182},
		// Invalid counts never panic and stay in range.
		{16383, 0, 0},
		{16383, -5, 0},
		{16383, 1 << 30, 16383},
		{16383, 1000, 16383 >> 5}, // rounded down to 512
	} {
		if got := ForSlot(tc.slot, tc.count); got != tc.want {
			t.Errorf("ForSlot(%d, %d) = %d, want %d", tc.slot, tc.count, got, tc.want)
		}
	}
}

// TestForKeyContiguous checks the documented layout: vShard v owns the slot
// range [v*Slots/count, (v+1)*Slots/count).
func TestForKeyContiguous(t *testing.T) {
	for count := MinCount; count <= MaxCount; count *= 2 {
		per := Slots / count
		for s := 0; s < Slots; s++ {
			if got, want := ForSlot(uint16(s), count), uint32(s/per); got != want {
				t.Fatalf("ForSlot(%d, %d) = %d, want %d", s, count, got, want)
			}
		}
	}
}

func validCount(t *rapid.T) int {
	return 1 << rapid.IntRange(4, 14).Draw(t, "log2count")
}

func TestPropertyHashTagSharesVShard(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		// A non-empty tag without '}' (a '}' would end the tag early) and
		// prefixes without '{' (a '{' would start an earlier tag).
		tag := rapid.SliceOfN(rapid.Byte().Filter(func(b byte) bool { return b != '}' }), 1, 16).Draw(t, "tag")
		noBrace := rapid.Byte().Filter(func(b byte) bool { return b != '{' })
		p1 := rapid.SliceOfN(noBrace, 0, 8).Draw(t, "prefix1")
		p2 := rapid.SliceOfN(noBrace, 0, 8).Draw(t, "prefix2")
		s1 := rapid.SliceOfN(rapid.Byte(), 0, 8).Draw(t, "suffix1")
		s2 := rapid.SliceOfN(rapid.Byte(), 0, 8).Draw(t, "suffix2")
		k1 := concat(p1, []byte{'{'}, tag, []byte{'}'}, s1)
		k2 := concat(p2, []byte{'{'}, tag, []byte{'}'}, s2)
		if Slot(k1) != Slot(tag) || Slot(k2) != Slot(tag) {
			t.Fatalf("keys %q and %q with tag %q: slots %d, %d, tag slot %d", k1, k2, tag, Slot(k1), Slot(k2), Slot(tag))
		}
		for count := MinCount; count <= MaxCount; count *= 2 {
			if a, b := ForKey(k1, count), ForKey(k2, count); a != b {
				t.Fatalf("count %d: %q -> %d but %q -> %d", count, k1, a, k2, b)
			}
		}
	})
}

func TestPropertyForKeyInRange(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		key := rapid.SliceOf(rapid.Byte()).Draw(t, "key")
		count := validCount(t)
		if v := ForKey(key, count); v >= uint32(count) {
			t.Fatalf("ForKey(%q, %d) = %d, out of range", key, count, v)
		}
		if Slot(key) != slotRef(string(key)) {
			t.Fatalf("Slot(%q) = %d, reference %d", key, Slot(key), slotRef(string(key)))
		}
		// Any int count is safe, whatever it is.
		_ = ForKey(key, rapid.Int().Draw(t, "anycount"))
	})
}

func concat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func TestSlotAllocs(t *testing.T) {
	key := []byte("{user1000}.following")
	if n := testing.AllocsPerRun(100, func() { _ = ForKey(key, DefaultCount) }); n != 0 {
		t.Fatalf("ForKey allocates %v times per call, want 0", n)
	}
}

func BenchmarkForKey(b *testing.B) {
	for _, size := range []int{16, 64, 256} {
		key := make([]byte, size)
		for i := range key {
			key[i] = byte('a' + i%26)
		}
		b.Run(strconv.Itoa(size)+"B", func(b *testing.B) {
			b.SetBytes(int64(size))
			b.ReportAllocs()
			var sink uint32
			for b.Loop() {
				sink += ForKey(key, DefaultCount)
			}
			_ = sink
		})
	}
}

func FuzzSlot(f *testing.F) {
	for _, s := range []string{"", "foo", "123456789", "{user1000}.following", "foo{}{bar}", "foo{{bar}}zap", "{", "}{", "\x00\xff{\x7f}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, key []byte) {
		if got, want := crc16(key), crc16Bitwise(key); got != want {
			t.Fatalf("crc16(%q) = %#x, bitwise %#x", key, got, want)
		}
		if got, want := Slot(key), slotRef(string(key)); got != want {
			t.Fatalf("Slot(%q) = %d, reference %d", key, got, want)
		}
		for count := MinCount; count <= MaxCount; count *= 2 {
			if v := ForKey(key, count); v >= uint32(count) {
				t.Fatalf("ForKey(%q, %d) = %d, out of range", key, count, v)
			}
		}
	})
}
