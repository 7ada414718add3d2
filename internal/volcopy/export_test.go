package volcopy

// The longest hole or clean gap one read spans between two data ranges,
// on a file source and on an NBD source.
const (
	SpanGapFile = spanGapFile
	SpanGapNBD  = spanGapNBD
)

// HoldUnitEntries sets the most manifest entries of one extent held in
// memory (0: none, every range goes to the files) and returns the undo.
func HoldUnitEntries(n int64) (undo func()) {
	old := maxUnitEntries
	maxUnitEntries = n
	return func() { maxUnitEntries = old }
}
