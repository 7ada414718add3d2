package keys

import (
	"strings"
	"time"
)

// The index of finished tasks, newest first:
//
//	tasks/index/BUCKET/ENTRY   one key per finished task
//
// BUCKET is the hour of the task's creation (UTC, YYYYMMDDHH) and ENTRY is
// its creation time to the nanosecond (YYYYMMDDhhmmss.nnnnnnnnn) and its
// id, joined by "_", each written with its digits inverted (0 for 9, 1 for
// 8, …; the id's hex digits likewise), so that the keys sort newest first.
// A page of the newest tasks is then the first keys of the range: etcd
// honours a read's limit only in ascending order (a descending read sorts
// the whole range first). Every part has a fixed width, so the keys sort
// alike on every backend, and a bucket holds an hour's tasks: ZooKeeper,
// which has no ranged read, lists the buckets and then one bucket at a
// time.
const (
	indexBucketLayout = "2006010215"
	indexTimeLayout   = "20060102150405.000000000"
)

// invertDigits complements each decimal digit (9 for 0, 8 for 1, …) and
// keeps every other byte; invertHex complements each lower-case hex digit
// (f for 0, …). Each is its own inverse and reverses the order of strings
// of one width.
func invertDigits(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= '0' && c <= '9' {
			b[i] = '9' - (c - '0')
		}
	}
	return string(b)
}

func invertHex(s string) string {
	const hex = "0123456789abcdef"
	b := []byte(s)
	for i, c := range b {
		if j := strings.IndexByte(hex, c); j >= 0 {
			b[i] = hex[15-j]
		}
	}
	return string(b)
}

// IndexDir holds the buckets of the finished-task index.
func (t Tasks) IndexDir() string { return t.root + "/tasks/index" }

// IndexReadyKey exists once every finished task has its index entry (the
// leader's backfill of a store written before the index wrote it).
func (t Tasks) IndexReadyKey() string { return t.root + "/tasks/index-ready" }

// IndexBucketDir is the bucket of the tasks created in hour bucket.
func (t Tasks) IndexBucketDir(bucket string) (string, error) {
	return child(t.IndexDir(), bucket, ValidIndexBucket)
}

// IndexKey is the index entry of finished task id created at created.
func (t Tasks) IndexKey(created time.Time, id string) (string, error) {
	if err := ValidTaskID(id); err != nil {
		return "", err
	}
	c := created.UTC()
	if c.Year() < 0 || c.Year() > 9999 {
		return "", refuse("creation time", c.String(), "the year must be 0000-9999")
	}
	dir, err := t.IndexBucketDir(invertDigits(c.Format(indexBucketLayout)))
	if err != nil {
		return "", err
	}
	return child(dir, invertDigits(c.Format(indexTimeLayout))+"_"+invertHex(id), ValidIndexEntry)
}

// ParseIndexKey reads the creation time and the task id back from an index
// key read from the store; a key that IndexKey would not build is an error.
func (t Tasks) ParseIndexKey(key string) (time.Time, string, error) {
	i := strings.LastIndexByte(key, '/')
	if i < 0 {
		return time.Time{}, "", refuse("index key", key, "it is not in "+t.IndexDir())
	}
	bucket, err := Child(t.IndexDir(), key[:i], ValidIndexBucket)
	if err != nil {
		return time.Time{}, "", err
	}
	entry, err := Child(t.IndexDir()+"/"+bucket, key, ValidIndexEntry)
	if err != nil {
		return time.Time{}, "", err
	}
	created, id := parseIndexEntry(entry)
	if invertDigits(created.Format(indexBucketLayout)) != bucket {
		return time.Time{}, "", refuse("index key", key, "its entry is not of its bucket's hour")
	}
	return created, id, nil
}

// ValidIndexBucket checks an index bucket: an hour, YYYYMMDDHH, inverted.
func ValidIndexBucket(s string) error {
	if len(s) != len(indexBucketLayout) || !digits(s) {
		return refuse("index bucket", s, "want an inverted hour YYYYMMDDHH")
	}
	s = invertDigits(s)
	if t, err := time.Parse(indexBucketLayout, s); err != nil || t.Format(indexBucketLayout) != s {
		return refuse("index bucket", invertDigits(s), "want an inverted hour YYYYMMDDHH")
	}
	return nil
}

// ValidIndexEntry checks an index entry: YYYYMMDDhhmmss.nnnnnnnnn_ID,
// inverted.
func ValidIndexEntry(s string) error {
	const n = len(indexTimeLayout)
	bad := refuse("index entry", s, "want an inverted YYYYMMDDhhmmss.nnnnnnnnn_TASKID")
	if len(s) != n+1+36 || s[n] != '_' {
		return bad
	}
	s = invertDigits(s[:n]) + "_" + invertHex(s[n+1:])
	if len(s) != n+1+36 || s[n] != '_' || s[14] != '.' || !digits(s[:14]) || !digits(s[15:n]) {
		return bad
	}
	if err := ValidTaskID(s[n+1:]); err != nil {
		return err
	}
	if t, err := time.Parse(indexTimeLayout, s[:n]); err != nil || t.Format(indexTimeLayout) != s[:n] {
		return bad
	}
	return nil
}

// parseIndexEntry splits a valid entry.
func parseIndexEntry(s string) (time.Time, string) {
	n := len(indexTimeLayout)
	t, _ := time.Parse(indexTimeLayout, invertDigits(s[:n]))
	return t, invertHex(s[n+1:])
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}
