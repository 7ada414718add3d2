// Package keys validates every value that becomes part of a store key, a
// path or an interface name, and builds every key taskd keeps in its
// coordination store.
//
// A value from a request or from the store (a node name, a VIP service, a
// task id, ...) reaches a key only through a builder of this package, and
// every builder validates the value with the one validator of its kind. A
// builder returns either an error that wraps ErrInvalid, or a key that is
// exactly its directory, a slash and one valid segment: no input can name a
// key outside the builder's directory ("..", ".", "/", empty, NUL, control
// characters and over-long values are refused by every kind). The fuzz tests
// of this package hold every builder to that.
//
// Why builders validate instead of taking typed values: a Go type with an
// unexported field cannot be forged outside its package, but its zero value
// can (a record decoded without the field has one), so a builder of typed
// values would still need an error or a panic for the zero value. Validating
// the string in the builder gives the same guarantee with one check, and
// the guard test of this package fails the build of any store package that
// makes a key by hand (path.Join, "/" concatenation, Sprintf) or drops a
// builder's error.
//
// The package imports only the standard library, so that every layer
// (quorum, task, vips, events, api) can use it without importing another.
package keys

import (
	"errors"
	"strconv"
	"strings"
	"unicode/utf8"
)

// ErrInvalid: a value is malformed or out of range; nothing was changed.
// Every validator's and builder's error wraps it.
var ErrInvalid = errors.New("invalid argument")

// MaxSegment bounds one key segment of any kind, in bytes.
const MaxSegment = 255

// invalid is a validation error: it reads as what was wrong and what to
// use, and it is ErrInvalid for errors.Is.
type invalid struct{ msg string }

func (e *invalid) Error() string        { return e.msg }
func (e *invalid) Is(target error) bool { return target == ErrInvalid }

func refuse(kind, value, rule string) error {
	return &invalid{msg: kind + " " + Quote(value) + " is not valid: " + rule}
}

// Quote renders a value for an error message or a log line: quoted with Go
// escapes (control characters cannot forge log lines) and cut at 64 bytes.
func Quote(s string) string {
	const show = 64
	if len(s) <= show {
		return strconv.Quote(s)
	}
	cut := show
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + "... (" + strconv.Itoa(len(s)) + " bytes)"
}

// segment is the floor every kind stands on: one non-empty path segment
// that is not "." or "..", with no slash, NUL, control character or
// invalid UTF-8, at most MaxSegment bytes.
func segment(s string) bool {
	if s == "" || s == "." || s == ".." || len(s) > MaxSegment || !utf8.ValidString(s) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '/' || c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

func isLower(c byte) bool    { return c >= 'a' && c <= 'z' }
func isDigit(c byte) bool    { return c >= '0' && c <= '9' }
func isHex(c byte) bool      { return isDigit(c) || (c >= 'a' && c <= 'f') }
func isAlnum(c byte) bool    { return isLower(c) || isDigit(c) || (c >= 'A' && c <= 'Z') }
func isLowAlnum(c byte) bool { return isLower(c) || isDigit(c) }

// word checks 1..max bytes: a first byte accepted by first, the rest by rest.
func word(s string, max int, first, rest func(byte) bool) bool {
	if len(s) == 0 || len(s) > max || !first(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if !rest(s[i]) {
			return false
		}
	}
	return true
}

func nameByte(c byte) bool    { return isAlnum(c) || c == '.' || c == '_' || c == '-' }
func serviceByte(c byte) bool { return isLowAlnum(c) || c == '_' || c == '-' }

// MaxName is the longest node name.
const MaxName = 63

// ValidName checks a node (member, runner) name: 1-63 letters, digits,
// '.', '_' or '-', starting with a letter or digit. Runners are named by
// their node, so it is the runner name too.
func ValidName(s string) error {
	if !segment(s) || !word(s, MaxName, isAlnum, nameByte) {
		return refuse("node name", s, "use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
	}
	return nil
}

// ValidService checks a VIP service name: 1-63 lower-case letters, digits,
// '_' or '-', starting with a letter or digit. (The address label
// INTERFACE:SERVICE must also fit the kernel's 15 characters; package vipaddr
// checks that.)
func ValidService(s string) error {
	if !segment(s) || !word(s, 63, isLowAlnum, serviceByte) {
		return refuse("VIP service name", s, "use 1-63 lower-case letters, digits, '-' or '_', starting with a letter or digit")
	}
	return nil
}

// ValidInterface checks a network interface name: 1-15 ASCII letters,
// digits, '.', '_' or '-', not "." or ".." (the kernel's IFNAMSIZ, without
// the characters that are legal there but unsafe in paths and labels).
func ValidInterface(s string) error {
	if !segment(s) || !word(s, 15, nameByte, nameByte) {
		return refuse("interface name", s, "use a Linux interface name: 1-15 letters, digits, '.', '_' or '-'")
	}
	return nil
}

// ValidTaskID checks a task id: a UUID in its canonical lower-case form
// (8-4-4-4-12 hex digits), as taskd creates them.
func ValidTaskID(s string) error {
	ok := segment(s) && len(s) == 36
	for i := 0; ok && i < len(s); i++ {
		switch i {
		case 8, 13, 18, 23:
			ok = s[i] == '-'
		default:
			ok = isHex(s[i])
		}
	}
	if !ok {
		return refuse("task id", s, "use the id taskctl printed: a lower-case UUID such as 0f8fad5b-d9cb-469f-a165-70867728950e")
	}
	return nil
}

// ValidSchedule checks a schedule name: 1-63 letters, digits, '.', '_' or
// '-', starting with a letter or digit, without "..".
func ValidSchedule(s string) error {
	if !segment(s) || !word(s, MaxName, isAlnum, nameByte) || strings.Contains(s, "..") {
		return refuse("schedule name", s, "use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
	}
	return nil
}

// ValidUID checks a record id that is a canonical lower-case UUID (a
// schedule's uid, a trigger request id).
func ValidUID(s string) error {
	if ValidTaskID(s) != nil {
		return refuse("id", s, "use a lower-case UUID such as 0f8fad5b-d9cb-469f-a165-70867728950e")
	}
	return nil
}

// ValidTaskType checks a task type name: 1-32 lower-case letters, digits,
// '_' or '-', starting with a letter.
func ValidTaskType(s string) error {
	if !segment(s) || !word(s, 32, isLower, serviceByte) {
		return refuse("task type", s, "use 1-32 lower-case letters, digits, '-' or '_', starting with a letter")
	}
	return nil
}

// MaxIdempotencyKey bounds an idempotency key, in bytes.
const MaxIdempotencyKey = 200

// ValidIdempotencyKey checks a key a client gives to make a task creation
// idempotent: 1-200 printable ASCII characters without spaces (for
// example "copy/vol-7/2026-11-26"). The store key is its SHA-256, so any
// such string is safe there.
func ValidIdempotencyKey(s string) error {
	ok := len(s) > 0 && len(s) <= MaxIdempotencyKey
	for i := 0; ok && i < len(s); i++ {
		ok = s[i] > 0x20 && s[i] < 0x7f
	}
	if !ok {
		return refuse("idempotency key", s, "use 1-200 printable ASCII characters without spaces")
	}
	return nil
}

// ValidConcurrencyKey checks a task's concurrency key: 1-128 printable
// ASCII characters without spaces (for example "volume/vol-7").
func ValidConcurrencyKey(s string) error {
	ok := len(s) > 0 && len(s) <= 128
	for i := 0; ok && i < len(s); i++ {
		ok = s[i] > 0x20 && s[i] < 0x7f
	}
	if !ok {
		return refuse("concurrency key", s, "use 1-128 printable ASCII characters without spaces, such as volume/vol-7")
	}
	return nil
}

// ValidDigest checks a hex SHA-256 digest (64 lower-case hex digits).
func ValidDigest(s string) error {
	if len(s) != 64 || !word(s, 64, isHex, isHex) {
		return refuse("digest", s, "use 64 lower-case hex digits")
	}
	return nil
}

// ValidShard checks a shard of the finished tasks: two lower-case hex digits.
func ValidShard(s string) error {
	if len(s) != 2 || !isHex(s[0]) || !isHex(s[1]) {
		return refuse("task shard", s, "use two lower-case hex digits")
	}
	return nil
}

// ValidSession checks a store session id as the backends name them
// ("lease-1a2b", "lease--1a2b", "zk-1a2b"): 1-64 ASCII letters, digits, '-'
// or '_', starting with a letter or digit.
func ValidSession(s string) error {
	if !segment(s) || !word(s, 64, isAlnum, func(c byte) bool { return isAlnum(c) || c == '-' || c == '_' }) {
		return refuse("session id", s, "use 1-64 letters, digits, '-' or '_', starting with a letter or digit")
	}
	return nil
}

// ValidTokenID checks an API token id: 8 lower-case hex digits (the ID of
// "taskd.ID.SECRET"), or "local-" and a node name for a node's own admin
// credential.
func ValidTokenID(s string) error {
	if len(s) == 8 && word(s, 8, isHex, isHex) {
		return nil
	}
	if n, ok := cutPrefix(s, "local-"); ok && len(s) <= MaxName && ValidName(n) == nil {
		return nil
	}
	return refuse("token id", s, "use 8 lower-case hex digits, or local-NODE")
}

func cutPrefix(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && s[:len(prefix)] == prefix {
		return s[len(prefix):], true
	}
	return s, false
}

// MaxSlot bounds the slot of an event ring (three decimal digits).
const MaxSlot = 999

// ValidSlot checks an event ring slot: 0..MaxSlot.
func ValidSlot(n int) error {
	if n < 0 || n > MaxSlot {
		return refuse("event slot", strconv.Itoa(n), "use 0-999")
	}
	return nil
}

// MaxRoot bounds a store root, in bytes.
const MaxRoot = 255

// ValidRoot checks a store root: an absolute path ("/taskd") of one or more
// segments, each a valid node name (letters, digits, '.', '_', '-', not
// starting with '.'), at most MaxRoot bytes.
func ValidRoot(s string) error {
	ok := len(s) > 1 && len(s) <= MaxRoot && s[0] == '/'
	start := 1
	for i := 1; ok && i <= len(s); i++ {
		if i == len(s) || s[i] == '/' {
			ok = ValidName(s[start:i]) == nil
			start = i + 1
		}
	}
	if !ok {
		return refuse("store root", s, "use an absolute path such as /taskd whose segments are letters, digits, '.', '_' or '-'")
	}
	return nil
}
