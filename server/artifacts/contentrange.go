package artifacts

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ContentRange is a parsed Content-Range request header of an upload.
type ContentRange struct {
	// Query is true for "bytes */SIZE" (or "bytes */*"): the client asks
	// what the server has, and sends no data.
	Query bool
	// First and Last are the inclusive byte positions of the data sent
	// (not set for a query).
	First, Last int64
	// Size is the whole file's size, or -1 for "*".
	Size int64
}

// ParseContentRange parses debusine's forms of the Content-Range header:
// "bytes FIRST-LAST/SIZE", "bytes FIRST-LAST/*", "bytes */SIZE" and
// "bytes */*".
func ParseContentRange(v string) (ContentRange, error) {
	rest, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return ContentRange{}, fmt.Errorf("invalid Content-Range %q: want bytes FIRST-LAST/SIZE or bytes */SIZE", v)
	}
	span, size, ok := strings.Cut(rest, "/")
	if !ok {
		return ContentRange{}, fmt.Errorf("invalid Content-Range %q: no /SIZE", v)
	}
	cr := ContentRange{Size: -1}
	if size != "*" {
		n, err := parseNumber(size)
		if err != nil {
			return ContentRange{}, fmt.Errorf("invalid Content-Range %q: size: %w", v, err)
		}
		cr.Size = n
	}
	if span == "*" {
		cr.Query = true
		return cr, nil
	}
	first, last, ok := strings.Cut(span, "-")
	if !ok {
		return ContentRange{}, fmt.Errorf("invalid Content-Range %q: want FIRST-LAST", v)
	}
	var err error
	if cr.First, err = parseNumber(first); err != nil {
		return ContentRange{}, fmt.Errorf("invalid Content-Range %q: first byte: %w", v, err)
	}
	if cr.Last, err = parseNumber(last); err != nil {
		return ContentRange{}, fmt.Errorf("invalid Content-Range %q: last byte: %w", v, err)
	}
	if cr.Last < cr.First {
		return ContentRange{}, fmt.Errorf("invalid Content-Range %q: the last byte is before the first", v)
	}
	if cr.Size >= 0 && cr.Last >= cr.Size {
		return ContentRange{}, fmt.Errorf("invalid Content-Range %q: the last byte is past the end of the file", v)
	}
	return cr, nil
}

func parseNumber(s string) (int64, error) {
	if s == "" || len(s) > 19 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, errors.New("not a decimal number")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, errors.New("out of range")
	}
	return n, nil
}

// ReceivedRange is debusine's Range reply header value for a file of which
// the server holds the first received bytes: "bytes=0-RECEIVED" (so
// "bytes=0-0" when it holds nothing); the client continues at RECEIVED.
func ReceivedRange(received int64) string {
	return "bytes=0-" + strconv.FormatInt(received, 10)
}
