package qmp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Kind says what a message from the server is.
type Kind int

// The kinds of server messages.
const (
	KindGreeting Kind = iota + 1 // {"QMP": {...}}
	KindReturn                   // {"return": ..., "id": ...}
	KindError                    // {"error": {"class", "desc"}, "id": ...}
	KindEvent                    // {"event": ..., "data": ..., "timestamp": ...}
)

func (k Kind) String() string {
	switch k {
	case KindGreeting:
		return "greeting"
	case KindReturn:
		return "return"
	case KindError:
		return "error"
	case KindEvent:
		return "event"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Message is one decoded server message. Exactly one of Greeting, Return
// (for KindReturn), Error or Event is set, as Kind says.
type Message struct {
	Kind     Kind
	Greeting *Greeting
	// ID is the reply's id exactly as sent (nil when the reply has none).
	ID     json.RawMessage
	Return json.RawMessage
	Error  *Error
	Event  *Event
}

// Greeting is the server's first message.
type Greeting struct {
	Version      VersionInfo `json:"version"`
	Capabilities []string    `json:"capabilities"`
}

// VersionInfo is QEMU's version as the greeting and query-version give it.
type VersionInfo struct {
	QEMU    Version `json:"qemu"`
	Package string  `json:"package"`
}

// Version is a QEMU release number.
type Version struct {
	Major int `json:"major"`
	Minor int `json:"minor"`
	Micro int `json:"micro"`
}

// AtLeast reports whether v is major.minor or newer.
func (v Version) AtLeast(major, minor int) bool {
	return v.Major > major || (v.Major == major && v.Minor >= minor)
}

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro) }

// Error is QEMU's refusal of a command, with its class (GenericError,
// CommandNotFound, DeviceNotFound, ...) and human description kept as
// QEMU sent them.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return e.Class + ": " + e.Desc }

// Event is one asynchronous event.
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data,omitempty"`
	// Time is the server's timestamp (zero when the server sent none or
	// an invalid one).
	Time time.Time `json:"time"`
	// Dropped is how many events this subscriber lost, because its buffer
	// was full, just before this one.
	Dropped uint64 `json:"dropped,omitempty"`
}

// ErrMalformed is wrapped by every decoding error.
var ErrMalformed = errors.New("malformed QMP message")

func malformed(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, a...))
}

// DecodeMessage decodes one server message (one JSON object). It never
// panics; anything that is not a greeting, a reply or an event is an
// error wrapping ErrMalformed that says which member was wrong.
func DecodeMessage(b []byte) (Message, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		return Message{}, malformed("not a JSON object: %v", err)
	}
	if top == nil {
		return Message{}, malformed("not a JSON object: null")
	}
	var m Message
	if id, ok := top["id"]; ok {
		m.ID = bytes.Clone(id)
	}
	has := func(k string) bool { _, ok := top[k]; return ok }
	switch {
	case has("QMP"):
		var g Greeting
		if err := strictObject(top["QMP"], &g); err != nil {
			return Message{}, malformed("greeting member \"QMP\": %v", err)
		}
		m.Kind, m.Greeting = KindGreeting, &g
	case has("return"):
		if has("error") {
			return Message{}, malformed("reply has both \"return\" and \"error\"")
		}
		m.Kind, m.Return = KindReturn, bytes.Clone(top["return"])
	case has("error"):
		var e Error
		if err := strictObject(top["error"], &e); err != nil {
			return Message{}, malformed("member \"error\": %v", err)
		}
		if e.Class == "" {
			return Message{}, malformed("member \"error\": no \"class\"")
		}
		m.Kind, m.Error = KindError, &e
	case has("event"):
		ev, err := decodeEvent(top)
		if err != nil {
			return Message{}, err
		}
		m.Kind, m.Event = KindEvent, ev
	default:
		return Message{}, malformed("object has none of \"QMP\", \"return\", \"error\", \"event\"")
	}
	return m, nil
}

// strictObject decodes raw, which must be a JSON object, into v.
func strictObject(raw json.RawMessage, v any) error {
	t := bytes.TrimLeft(raw, " \t\r\n")
	if len(t) == 0 || t[0] != '{' {
		return errors.New("not a JSON object")
	}
	return json.Unmarshal(raw, v)
}

func decodeEvent(top map[string]json.RawMessage) (*Event, error) {
	var ev Event
	if err := json.Unmarshal(top["event"], &ev.Name); err != nil {
		return nil, malformed("member \"event\": not a string: %v", err)
	}
	if ev.Name == "" {
		return nil, malformed("member \"event\": empty name")
	}
	if d, ok := top["data"]; ok && !bytes.Equal(bytes.TrimSpace(d), []byte("null")) {
		ev.Data = bytes.Clone(d)
	}
	if ts, ok := top["timestamp"]; ok {
		var t struct {
			Seconds      int64 `json:"seconds"`
			Microseconds int64 `json:"microseconds"`
		}
		if err := strictObject(ts, &t); err != nil {
			return nil, malformed("event %q member \"timestamp\": %v", ev.Name, err)
		}
		// QEMU sends -1/-1 when it could not read the clock.
		if t.Seconds >= 0 && t.Microseconds >= 0 && t.Microseconds < 1_000_000 && t.Seconds < 1<<40 {
			ev.Time = time.Unix(t.Seconds, t.Microseconds*1000)
		}
	}
	return &ev, nil
}

// command is the wire form of one request.
type command struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
	ID        uint64 `json:"id"`
}

// parseID returns the numeric id we sent, if raw is one.
func parseID(raw json.RawMessage) (uint64, bool) {
	if len(raw) == 0 {
		return 0, false
	}
	id, err := strconv.ParseUint(string(bytes.TrimSpace(raw)), 10, 64)
	return id, err == nil
}
