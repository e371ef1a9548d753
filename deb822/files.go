package deb822

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// FileEntry is one file that a .dsc or .changes lists.
type FileEntry struct {
	// Name is the file's name, in the directory of the listing file.
	Name string
	Size int64
	// MD5 is the hex MD5 sum from the Files field.
	MD5 string
	// SHA256 is the hex SHA-256 sum from the Checksums-Sha256 field, ""
	// when the paragraph has none.
	SHA256 string
	// Section and Priority are the extra columns of a .changes Files
	// field, "" in a .dsc.
	Section, Priority string
}

// ParseFilesField parses the value of a Files field: one file per line, as
// "md5 size name" (.dsc) or "md5 size section priority name" (.changes).
func ParseFilesField(value string) ([]FileEntry, error) {
	return parseFileList(value, 32, func(e *FileEntry, words []string) error {
		switch len(words) {
		case 3:
		case 5:
			e.Section, e.Priority = words[2], words[3]
		default:
			return fmt.Errorf("want \"md5 size name\" or \"md5 size section priority name\", got %d words", len(words))
		}
		e.MD5 = words[0]
		return nil
	})
}

// ParseChecksumsSha256Field parses the value of a Checksums-Sha256 field:
// one "sha256 size name" line per file.
func ParseChecksumsSha256Field(value string) ([]FileEntry, error) {
	return parseFileList(value, 64, func(e *FileEntry, words []string) error {
		if len(words) != 3 {
			return fmt.Errorf("want \"sha256 size name\", got %d words", len(words))
		}
		e.SHA256 = words[0]
		return nil
	})
}

// parseFileList parses the lines of a file list whose first word is a hex
// digest of hexLen digits, the second the size and the last the name; fill
// checks the number of words and sets the digest and extra columns.
func parseFileList(value string, hexLen int, fill func(*FileEntry, []string) error) ([]FileEntry, error) {
	var out []FileEntry
	seen := map[string]bool{}
	n := 0
	for line := range strings.SplitSeq(value, "\n") {
		words := strings.Fields(line)
		if len(words) == 0 {
			continue // the empty first line of "Files:\n …"
		}
		n++
		var e FileEntry
		if err := fill(&e, words); err != nil {
			return nil, fmt.Errorf("entry %d: %w", n, err)
		}
		if err := checkHex(words[0], hexLen); err != nil {
			return nil, fmt.Errorf("entry %d: %w", n, err)
		}
		size, err := strconv.ParseInt(words[1], 10, 64)
		if err != nil || strings.TrimLeft(words[1], "0123456789") != "" {
			return nil, fmt.Errorf("entry %d: invalid size %q", n, words[1])
		}
		e.Size = size
		e.Name = words[len(words)-1]
		if err := checkName(e.Name); err != nil {
			return nil, fmt.Errorf("entry %d: %w", n, err)
		}
		if seen[e.Name] {
			return nil, fmt.Errorf("entry %d: %s is listed twice", n, e.Name)
		}
		seen[e.Name] = true
		out = append(out, e)
	}
	return out, nil
}

func checkHex(s string, n int) error {
	if len(s) != n {
		return fmt.Errorf("invalid checksum %q: want %d hex digits", s, n)
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return fmt.Errorf("invalid checksum %q: want %d hex digits", s, n)
		}
	}
	return nil
}

// checkName accepts a plain file name: the files a .dsc or .changes lists
// sit next to it, and a path would let a crafted file reach elsewhere.
func checkName(name string) error {
	if name == "." || name == ".." || strings.ContainsAny(name, "/\\") {
		return fmt.Errorf("invalid file name %q: want a plain file name", name)
	}
	return nil
}

// FileEntries returns the files the paragraph lists in its Files field,
// each with the SHA-256 its Checksums-Sha256 field gives when it has one.
// The two fields must list the same files with the same sizes. Errors name
// the file and the line of the field.
func (p Paragraph) FileEntries() ([]FileEntry, error) {
	files, ok := p.Field("Files")
	if !ok {
		return nil, &SyntaxError{File: p.File, Line: p.Line, Err: errors.New("no Files field")}
	}
	entries, err := ParseFilesField(files.Value)
	if err != nil {
		return nil, &SyntaxError{File: p.File, Line: files.Line, Err: fmt.Errorf("field %s: %w", files.Name, err)}
	}
	sums, ok := p.Field("Checksums-Sha256")
	if !ok {
		return entries, nil
	}
	sha, err := ParseChecksumsSha256Field(sums.Value)
	if err != nil {
		return nil, &SyntaxError{File: p.File, Line: sums.Line, Err: fmt.Errorf("field %s: %w", sums.Name, err)}
	}
	byName := make(map[string]FileEntry, len(sha))
	for _, s := range sha {
		byName[s.Name] = s
	}
	for i := range entries {
		s, ok := byName[entries[i].Name]
		if !ok {
			return nil, &SyntaxError{File: p.File, Line: sums.Line,
				Err: fmt.Errorf("field %s does not list %s, which %s lists", sums.Name, entries[i].Name, files.Name)}
		}
		if s.Size != entries[i].Size {
			return nil, &SyntaxError{File: p.File, Line: sums.Line,
				Err: fmt.Errorf("field %s gives %s %d bytes, %s %d", sums.Name, s.Name, s.Size, files.Name, entries[i].Size)}
		}
		entries[i].SHA256 = s.SHA256
		delete(byName, s.Name)
	}
	for _, s := range sha { // in field order, for a stable message
		if _, extra := byName[s.Name]; extra {
			return nil, &SyntaxError{File: p.File, Line: sums.Line,
				Err: fmt.Errorf("field %s lists %s, which %s does not", sums.Name, s.Name, files.Name)}
		}
	}
	return entries, nil
}

// Kind selects how Dict treats the checksum fields: as python-debian's
// Deb822 (Plain), Dsc or Changes class does.
type Kind int

// Kinds of control file for Dict.
const (
	// Plain leaves every field a string (a DEBIAN/control).
	Plain Kind = iota
	// Dsc splits Files and Checksums-Sha1/-Sha256/-Sha512 as in a .dsc.
	Dsc
	// Changes splits them as in a .changes, whose Files lines also have
	// section and priority.
	Changes
)

// columns are the names python-debian gives the words of each line of the
// multivalued fields (keys in lower case).
func (k Kind) columns() map[string][]string {
	sums := map[string][]string{
		"checksums-sha1":   {"sha1", "size", "name"},
		"checksums-sha256": {"sha256", "size", "name"},
		"checksums-sha512": {"sha512", "size", "name"},
	}
	switch k {
	case Dsc:
		sums["files"] = []string{"md5sum", "size", "name"}
	case Changes:
		sums["files"] = []string{"md5sum", "size", "section", "priority", "name"}
	default:
		return nil
	}
	return sums
}

// Dict returns the paragraph as debusine stores python-debian's parse of
// it in artifact data: a map from field names as written to values. Every
// value is the field's string, except, for Dsc and Changes, the checksum
// fields: a value of several lines becomes a list with a map per non-empty
// line from the column names (md5sum, size, name, …) to the line's words,
// a one-line value a single such map. As in python-debian, a line with
// fewer words than columns gives a map of fewer keys and extra words are
// dropped: validate with FileEntries.
func (p Paragraph) Dict(k Kind) map[string]any {
	cols := k.columns()
	out := make(map[string]any, len(p.Fields))
	for _, f := range p.Fields {
		names, ok := cols[strings.ToLower(f.Name)]
		if !ok {
			out[f.Name] = f.Value
			continue
		}
		if !strings.Contains(f.Value, "\n") {
			out[f.Name] = columnMap(names, f.Value)
			continue
		}
		list := []map[string]string{}
		for line := range strings.SplitSeq(f.Value, "\n") {
			if line != "" {
				list = append(list, columnMap(names, line))
			}
		}
		out[f.Name] = list
	}
	return out
}

func columnMap(names []string, line string) map[string]string {
	m := map[string]string{}
	for i, w := range strings.Fields(line) {
		if i >= len(names) {
			break
		}
		m[names[i]] = w
	}
	return m
}
