package artifacts

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseContentRange(t *testing.T) {
	cases := []struct {
		in   string
		want ContentRange
		err  string
	}{
		{in: "bytes */100", want: ContentRange{Query: true, Size: 100}},
		{in: "bytes */0", want: ContentRange{Query: true, Size: 0}},
		{in: "bytes */*", want: ContentRange{Query: true, Size: -1}},
		{in: "bytes 0-99/100", want: ContentRange{First: 0, Last: 99, Size: 100}},
		{in: "bytes 10-19/*", want: ContentRange{First: 10, Last: 19, Size: -1}},
		{in: "bytes 5-5/6", want: ContentRange{First: 5, Last: 5, Size: 6}},
		{in: "", err: "want bytes"},
		{in: "bits 0-1/2", err: "want bytes"},
		{in: "bytes 0-1", err: "no /SIZE"},
		{in: "bytes 0-1/x", err: "size"},
		{in: "bytes -1/2", err: "first byte"},
		{in: "bytes 1-/2", err: "last byte"},
		{in: "bytes 5-4/10", err: "before the first"},
		{in: "bytes 0-10/10", err: "past the end"},
		{in: "bytes +1-2/3", err: "first byte"},
		{in: "bytes 0-99999999999999999999/*", err: "last byte"},
		{in: "bytes 0-1/2 ", err: "size"},
		{in: "bytes  */2", err: "want FIRST-LAST"},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseContentRange(tc.in)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestReceivedRange(t *testing.T) {
	require.Equal(t, "bytes=0-0", ReceivedRange(0))
	require.Equal(t, "bytes=0-1048576", ReceivedRange(1<<20))
}
