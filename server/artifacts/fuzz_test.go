package artifacts

import (
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// formatContentRange writes cr in the canonical form of the header, the
// inverse of ParseContentRange.
func formatContentRange(cr ContentRange) string {
	size := "*"
	if cr.Size >= 0 {
		size = strconv.FormatInt(cr.Size, 10)
	}
	if cr.Query {
		return "bytes */" + size
	}
	return "bytes " + strconv.FormatInt(cr.First, 10) + "-" + strconv.FormatInt(cr.Last, 10) + "/" + size
}

// FuzzParseContentRange checks the parser of a header that comes from the
// network: it never panics; it accepts only "bytes " followed by digits,
// '*', '-' and '/'; what it accepts is a consistent range (a query carries
// no bytes; otherwise 0 <= First <= Last, and Last < Size when the size is
// known, so that the chunk's length Last-First+1 is positive and within the
// file); and the canonical form of what it accepts parses to the same
// range, and is the input itself when the input has no leading zeros.
func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{
		"bytes */100", "bytes */0", "bytes */*", "bytes 0-99/100", "bytes 10-19/*", "bytes 5-5/6", "bytes 0-0/1",
		"bytes 5-4/10", "bytes 0-10/10", "bytes 0-0/0", "bytes 99999999999999999999-1/2",
		"bytes 0-9223372036854775807/*", "bytes 0-9223372036854775806/9223372036854775807",
		"bytes 9223372036854775807-9223372036854775807/*", "bytes 0-9223372036854775808/*",
		"bytes 007-008/0010", "bytes 0000000000000000000001-2/3", "bytes 0-1/2 ", "bytes  0-1/2", "bytes\t0-1/2",
		"Bytes 0-1/2", "bytes +1-2/3", "bytes -1-2/3", "bytes 1--2/3", "bytes 1-2/-3", "bytes 1-2-3/4", "bytes 1-2/3/4",
		"bytes */", "bytes -/", "bytes /", "bytes 1-2/", "bytes */-1", "bytes 0x1-2/3", "bytes 1_0-20/30",
		"bytes ١-٢/٣", "bytes 0-1/2\x00", "", "bytes", "bytes ",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cr, err := ParseContentRange(s)
		if err != nil {
			require.Zero(t, cr, "%q: a refusal returns the zero ContentRange", s)
			require.Contains(t, err.Error(), "invalid Content-Range")
			return
		}
		rest, ok := strings.CutPrefix(s, "bytes ")
		require.True(t, ok, "%q accepted without the bytes unit", s)
		require.Empty(t, strings.Trim(rest, "0123456789*-/"), "%q accepted with other characters", s)
		require.GreaterOrEqual(t, cr.Size, int64(-1), "%q", s)
		if cr.Query {
			require.Zero(t, cr.First, "%q: a query carries no bytes", s)
			require.Zero(t, cr.Last, "%q: a query carries no bytes", s)
		} else {
			require.GreaterOrEqual(t, cr.First, int64(0), "%q", s)
			require.LessOrEqual(t, cr.First, cr.Last, "%q", s)
			if cr.Size >= 0 {
				require.Less(t, cr.Last, cr.Size, "%q", s)
				n := cr.Last - cr.First + 1
				require.Positive(t, n, "%q: the chunk's length overflows", s)
				require.LessOrEqual(t, n, cr.Size, "%q", s)
			}
		}

		canonical := formatContentRange(cr)
		again, err := ParseContentRange(canonical)
		require.NoError(t, err, "%q, from %q", canonical, s)
		require.Equal(t, cr, again, "%q, from %q", canonical, s)
		if !hasLeadingZero(rest) {
			require.Equal(t, s, canonical)
		}

	})
}

// hasLeadingZero reports whether one of the numbers in s (separated by
// '-' and '/') is written with a superfluous leading zero.
func hasLeadingZero(s string) bool {
	for _, n := range strings.FieldsFunc(s, func(r rune) bool { return r == '-' || r == '/' }) {
		if len(n) > 1 && n[0] == '0' {
			return true
		}
	}
	return false
}
