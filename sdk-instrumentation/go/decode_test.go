package memspan

import (
	"encoding/binary"
	"fmt"
	"math"
)

// A small, strict protobuf decoder for the tests: it knows nothing of OTLP, only the wire format, so the field
// numbers the encoder writes are checked against those written out again here.

type pbField struct {
	wire int
	num  uint64 // varint and fixed values
	data []byte // length-delimited payload
}

type pbMessage map[uint64][]pbField

func decodeVarint(b []byte) (uint64, int, error) {
	var v uint64
	for i := 0; i < len(b) && i < 10; i++ {
		v |= uint64(b[i]&0x7f) << (7 * i)
		if b[i] < 0x80 {
			return v, i + 1, nil
		}
	}
	return 0, 0, fmt.Errorf("truncated varint")
}

// decodePB decodes one message level, failing on anything malformed or left over.
func decodePB(b []byte) (pbMessage, error) {
	m := pbMessage{}
	for len(b) > 0 {
		key, n, err := decodeVarint(b)
		if err != nil {
			return nil, err
		}
		b = b[n:]
		f := pbField{wire: int(key & 7)}
		switch f.wire {
		case 0:
			if f.num, n, err = decodeVarint(b); err != nil {
				return nil, err
			}
			b = b[n:]
		case 1:
			if len(b) < 8 {
				return nil, fmt.Errorf("truncated fixed64")
			}
			f.num, b = binary.LittleEndian.Uint64(b), b[8:]
		case 5:
			if len(b) < 4 {
				return nil, fmt.Errorf("truncated fixed32")
			}
			f.num, b = uint64(binary.LittleEndian.Uint32(b)), b[4:]
		case 2:
			l, n, err := decodeVarint(b)
			if err != nil {
				return nil, err
			}
			b = b[n:]
			if uint64(len(b)) < l {
				return nil, fmt.Errorf("length %d past the end (%d left)", l, len(b))
			}
			f.data, b = b[:l], b[l:]
		default:
			return nil, fmt.Errorf("wire type %d", f.wire)
		}
		if key>>3 == 0 {
			return nil, fmt.Errorf("field number 0")
		}
		m[key>>3] = append(m[key>>3], f)
	}
	return m, nil
}

// msgs decodes every occurrence of a message field; it panics on malformed data (a test failure).
func (m pbMessage) msgs(field uint64) []pbMessage {
	var out []pbMessage
	for _, f := range m[field] {
		if f.wire != 2 {
			panic(fmt.Sprintf("field %d: wire type %d, want 2", field, f.wire))
		}
		sub, err := decodePB(f.data)
		if err != nil {
			panic(fmt.Sprintf("field %d: %v", field, err))
		}
		out = append(out, sub)
	}
	return out
}

func (m pbMessage) msg(field uint64) pbMessage {
	all := m.msgs(field)
	if len(all) != 1 {
		panic(fmt.Sprintf("field %d: %d occurrences, want 1", field, len(all)))
	}
	return all[0]
}

func (m pbMessage) has(field uint64) bool { return len(m[field]) > 0 }

func (m pbMessage) str(field uint64) string {
	if !m.has(field) {
		return ""
	}
	return string(m[field][len(m[field])-1].data)
}

func (m pbMessage) u64(field uint64) uint64 {
	if !m.has(field) {
		return 0
	}
	return m[field][len(m[field])-1].num
}

// attrs decodes repeated KeyValue field `field` into Go values: string, int64, float64 or bool.
func (m pbMessage) attrs(field uint64) map[string]any {
	out := map[string]any{}
	for _, kv := range m.msgs(field) {
		v := kv.msg(2)
		switch {
		case v.has(1):
			out[kv.str(1)] = v.str(1)
		case v.has(2):
			out[kv.str(1)] = v.u64(2) == 1
		case v.has(3):
			out[kv.str(1)] = int64(v.u64(3))
		case v.has(4):
			out[kv.str(1)] = math.Float64frombits(v.u64(4))
		default:
			out[kv.str(1)] = nil
		}
	}
	return out
}
