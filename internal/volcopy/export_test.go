package volcopy

// The longest hole or clean gap one read spans between two data ranges,
// on a file source and on an NBD source.
const (
	SpanGapFile = spanGapFile
	SpanGapNBD  = spanGapNBD
)
