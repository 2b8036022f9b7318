package vshard

// crc16Table is the lookup table of CRC16-XMODEM (CCITT polynomial 0x1021,
// initial value 0, no reflection, no final xor), the CRC Redis Cluster uses
// for hash slots. It is computed at init from the polynomial rather than
// pasted, and the tests check it against a bitwise implementation and
// against the standard check value crc16("123456789") = 0x31C3.
var crc16Table = func() (t [256]uint16) {
	const poly = 0x1021
	for i := range t {
		c := uint16(i) << 8
		for range 8 {
			if c&0x8000 != 0 {
				c = c<<1 ^ poly
			} else {
				c <<= 1
			}
		}
		t[i] = c
	}
	return t
}()

// crc16 returns the CRC16-XMODEM of b, one table lookup per byte.
func crc16(b []byte) uint16 {
	var crc uint16
	for _, c := range b {
		crc = crc<<8 ^ crc16Table[byte(crc>>8)^c]
	}
	return crc
}
