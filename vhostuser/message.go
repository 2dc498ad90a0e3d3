package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// wire is the byte order of vhost-user messages: the host's own (both
// ends run on the same machine). Ring memory is little-endian (virtio 1.x).
var wire = binary.NativeEndian

// RequestType is a front-end request code (the u32 at offset 0 of the header).
type RequestType uint32

// Front-end requests, numbered as in the vhost-user specification.
const (
	ReqGetFeatures         RequestType = 1
	ReqSetFeatures         RequestType = 2
	ReqSetOwner            RequestType = 3
	ReqResetOwner          RequestType = 4
	ReqSetMemTable         RequestType = 5
	ReqSetLogBase          RequestType = 6
	ReqSetLogFd            RequestType = 7
	ReqSetVringNum         RequestType = 8
	ReqSetVringAddr        RequestType = 9
	ReqSetVringBase        RequestType = 10
	ReqGetVringBase        RequestType = 11
	ReqSetVringKick        RequestType = 12
	ReqSetVringCall        RequestType = 13
	ReqSetVringErr         RequestType = 14
	ReqGetProtocolFeatures RequestType = 15
	ReqSetProtocolFeatures RequestType = 16
	ReqGetQueueNum         RequestType = 17
	ReqSetVringEnable      RequestType = 18
	ReqSendRARP            RequestType = 19
	ReqNetSetMTU           RequestType = 20
	ReqSetBackendReqFd     RequestType = 21
	ReqIOTLBMsg            RequestType = 22
	ReqSetVringEndian      RequestType = 23
	ReqGetConfig           RequestType = 24
	ReqSetConfig           RequestType = 25
	ReqCreateCryptoSession RequestType = 26
	ReqCloseCryptoSession  RequestType = 27
	ReqPostcopyAdvise      RequestType = 28
	ReqPostcopyListen      RequestType = 29
	ReqPostcopyEnd         RequestType = 30
	ReqGetInflightFd       RequestType = 31
	ReqSetInflightFd       RequestType = 32
	ReqGPUSetSocket        RequestType = 33
	ReqResetDevice         RequestType = 34
	ReqVringKick           RequestType = 35
	ReqGetMaxMemSlots      RequestType = 36
	ReqAddMemReg           RequestType = 37
	ReqRemMemReg           RequestType = 38
	ReqSetStatus           RequestType = 39
	ReqGetStatus           RequestType = 40
	ReqGetSharedObject     RequestType = 41
	ReqSetDeviceStateFd    RequestType = 42
	ReqCheckDeviceState    RequestType = 43
	ReqGetShmemConfig      RequestType = 44

	reqFirst   = ReqGetFeatures
	maxRequest = ReqGetShmemConfig
)

// BackendRequestType is a request code on the back-end channel
// (SET_BACKEND_REQ_FD), sent by us to the front-end.
type BackendRequestType uint32

// Back-end requests.
const (
	BackendIOTLBMsg           BackendRequestType = 1
	BackendConfigChangeMsg    BackendRequestType = 2
	BackendVringHostNotifier  BackendRequestType = 3
	BackendVringCall          BackendRequestType = 4
	BackendVringErr           BackendRequestType = 5
	BackendSharedObjectAdd    BackendRequestType = 6
	BackendSharedObjectRemove BackendRequestType = 7
	BackendSharedObjectLookup BackendRequestType = 8
	BackendShmemMap           BackendRequestType = 9
	BackendShmemUnmap         BackendRequestType = 10

	maxBackendRequest = BackendShmemUnmap
)

// Header flags.
const (
	FlagVersion     uint32 = 0x1 // version 1 in bits 0–1
	FlagReply       uint32 = 0x4
	FlagNeedReply   uint32 = 0x8
	flagVersionMask        = 0x3
	// ReplyFlags is the exact flags word of every reply (QEMU rejects others).
	ReplyFlags = FlagVersion | FlagReply
)

// Sizes and limits of the wire format.
const (
	HeaderSize = 12
	// MaxPayload bounds what we accept: the largest defined payload is the
	// 2056-byte shared-memory config; anything above 4 KiB is refused.
	MaxPayload = 4096
	// MaxFds is the most fds one message may carry (SCM_RIGHTS).
	MaxFds = 8
	// MaxMemTableRegions is the SET_MEM_TABLE region limit.
	MaxMemTableRegions = 8
	// MaxConfigSize is QEMU's limit on a device config space.
	MaxConfigSize = 256
	// MaxShmemRegions is the number of shmid slots in GET_SHMEM_CONFIG.
	MaxShmemRegions = 256
	// VringNoFd is bit 8 of the SET_VRING_KICK/CALL/ERR u64: no fd sent.
	VringNoFd = 1 << 8
	// VringIndexMask selects the vring index in that u64.
	VringIndexMask = 0xff
)

// Virtio feature bits (the device feature word).
const (
	FeatureNotifyOnEmpty    = 1 << 24
	FeatureLogAll           = 1 << 26
	FeatureIndirectDesc     = 1 << 28
	FeatureEventIdx         = 1 << 29
	FeatureProtocolFeatures = 1 << 30 // VHOST_USER_F_PROTOCOL_FEATURES
	FeatureVersion1         = 1 << 32
	FeatureAccessPlatform   = 1 << 33
	FeatureRingPacked       = 1 << 34
)

// Protocol feature bits.
const (
	ProtoMQ                = 1 << 0
	ProtoLogShmfd          = 1 << 1
	ProtoRARP              = 1 << 2
	ProtoReplyAck          = 1 << 3
	ProtoMTU               = 1 << 4
	ProtoBackendReq        = 1 << 5
	ProtoCrossEndian       = 1 << 6
	ProtoCryptoSession     = 1 << 7
	ProtoPagefault         = 1 << 8
	ProtoConfig            = 1 << 9
	ProtoBackendSendFd     = 1 << 10
	ProtoHostNotifier      = 1 << 11
	ProtoInflightShmfd     = 1 << 12
	ProtoResetDevice       = 1 << 13
	ProtoInbandNotify      = 1 << 14
	ProtoConfigureMemSlots = 1 << 15
	ProtoStatus            = 1 << 16
	ProtoXenMmap           = 1 << 17
	ProtoSharedObject      = 1 << 18
	ProtoDeviceState       = 1 << 19
	// ProtoShmem is the shared-memory feature (GET_SHMEM_CONFIG, SHMEM_MAP,
	// SHMEM_UNMAP) as QEMU 11.1.2 numbers it.
	ProtoShmem = 1 << 22
)

// Header is the 12-byte message header.
type Header struct {
	Request uint32
	Flags   uint32
	Size    uint32
}

// MarshalBinary encodes the header.
func (h Header) MarshalBinary() ([]byte, error) {
	b := make([]byte, HeaderSize)
	wire.PutUint32(b[0:], h.Request)
	wire.PutUint32(b[4:], h.Flags)
	wire.PutUint32(b[8:], h.Size)
	return b, nil
}

// UnmarshalBinary decodes exactly 12 bytes.
func (h *Header) UnmarshalBinary(b []byte) error {
	if len(b) != HeaderSize {
		return fmt.Errorf("header: %d bytes, want %d", len(b), HeaderSize)
	}
	h.Request = wire.Uint32(b[0:])
	h.Flags = wire.Uint32(b[4:])
	h.Size = wire.Uint32(b[8:])
	return nil
}

// NeedReply reports whether the sender asked for a reply (REPLY_ACK).
func (h Header) NeedReply() bool { return h.Flags&FlagNeedReply != 0 }

// Check validates a header read from the peer: version 1, no unknown
// flag bits, reply bit as expected, payload within MaxPayload.
func (h Header) Check(wantReply bool) error {
	if h.Flags&flagVersionMask != FlagVersion {
		return fmt.Errorf("header flags %#x: version %d, want 1", h.Flags, h.Flags&flagVersionMask)
	}
	if h.Flags&^(flagVersionMask|FlagReply|FlagNeedReply) != 0 {
		return fmt.Errorf("header flags %#x: unknown bits %#x", h.Flags, h.Flags&^(flagVersionMask|FlagReply|FlagNeedReply))
	}
	if (h.Flags&FlagReply != 0) != wantReply {
		return fmt.Errorf("header flags %#x: reply bit is %v, want %v", h.Flags, h.Flags&FlagReply != 0, wantReply)
	}
	if h.Size > MaxPayload {
		return fmt.Errorf("header: payload size %d exceeds the %d-byte limit", h.Size, MaxPayload)
	}
	return nil
}

func wantLen(what string, b []byte, n int) error {
	if len(b) != n {
		return fmt.Errorf("%s payload: %d bytes, want %d", what, len(b), n)
	}
	return nil
}

// U64 is the payload of feature words, statuses and acks.
type U64 struct{ Value uint64 }

// MarshalBinary encodes the value.
func (p U64) MarshalBinary() ([]byte, error) {
	return wire.AppendUint64(nil, p.Value), nil
}

// UnmarshalBinary decodes exactly 8 bytes.
func (p *U64) UnmarshalBinary(b []byte) error {
	if err := wantLen("u64", b, 8); err != nil {
		return err
	}
	p.Value = wire.Uint64(b)
	return nil
}

// VringState is the state payload (index, num) and, for the split ring,
// the vring index payload.
type VringState struct {
	Index uint32
	Num   uint32
}

// MarshalBinary encodes the payload.
func (p VringState) MarshalBinary() ([]byte, error) {
	b := wire.AppendUint32(nil, p.Index)
	return wire.AppendUint32(b, p.Num), nil
}

// UnmarshalBinary decodes exactly 8 bytes.
func (p *VringState) UnmarshalBinary(b []byte) error {
	if err := wantLen("vring state", b, 8); err != nil {
		return err
	}
	p.Index, p.Num = wire.Uint32(b), wire.Uint32(b[4:])
	return nil
}

// VringAddr is the SET_VRING_ADDR payload: front-end user addresses of the
// three ring parts (IOVAs with ACCESS_PLATFORM).
type VringAddr struct {
	Index uint32
	Flags uint32
	Desc  uint64
	Used  uint64
	Avail uint64
	Log   uint64
}

// VringAddrSize is the encoded size of VringAddr.
const VringAddrSize = 40

// MarshalBinary encodes the payload.
func (p VringAddr) MarshalBinary() ([]byte, error) {
	b := wire.AppendUint32(nil, p.Index)
	b = wire.AppendUint32(b, p.Flags)
	b = wire.AppendUint64(b, p.Desc)
	b = wire.AppendUint64(b, p.Used)
	b = wire.AppendUint64(b, p.Avail)
	return wire.AppendUint64(b, p.Log), nil
}

// UnmarshalBinary decodes exactly 40 bytes.
func (p *VringAddr) UnmarshalBinary(b []byte) error {
	if err := wantLen("vring addr", b, VringAddrSize); err != nil {
		return err
	}
	p.Index, p.Flags = wire.Uint32(b), wire.Uint32(b[4:])
	p.Desc, p.Used = wire.Uint64(b[8:]), wire.Uint64(b[16:])
	p.Avail, p.Log = wire.Uint64(b[24:]), wire.Uint64(b[32:])
	return nil
}

// MemRegion describes one guest memory region.
type MemRegion struct {
	GPA        uint64
	Size       uint64
	UserAddr   uint64
	MmapOffset uint64
}

// MemRegionSize is the encoded size of MemRegion.
const MemRegionSize = 32

func (r MemRegion) appendTo(b []byte) []byte {
	b = wire.AppendUint64(b, r.GPA)
	b = wire.AppendUint64(b, r.Size)
	b = wire.AppendUint64(b, r.UserAddr)
	return wire.AppendUint64(b, r.MmapOffset)
}

func decodeRegion(b []byte) MemRegion {
	return MemRegion{wire.Uint64(b), wire.Uint64(b[8:]), wire.Uint64(b[16:]), wire.Uint64(b[24:])}
}

// MarshalBinary encodes the region.
func (r MemRegion) MarshalBinary() ([]byte, error) { return r.appendTo(nil), nil }

// UnmarshalBinary decodes exactly 32 bytes.
func (r *MemRegion) UnmarshalBinary(b []byte) error {
	if err := wantLen("memory region", b, MemRegionSize); err != nil {
		return err
	}
	*r = decodeRegion(b)
	return nil
}

// MemTable is the SET_MEM_TABLE payload.
type MemTable struct {
	Regions []MemRegion
}

// MarshalBinary encodes the table.
func (p MemTable) MarshalBinary() ([]byte, error) {
	if len(p.Regions) > MaxMemTableRegions {
		return nil, fmt.Errorf("memory table: %d regions, at most %d", len(p.Regions), MaxMemTableRegions)
	}
	b := wire.AppendUint32(nil, uint32(len(p.Regions)))
	b = wire.AppendUint32(b, 0)
	for _, r := range p.Regions {
		b = r.appendTo(b)
	}
	return b, nil
}

// UnmarshalBinary decodes a table whose length matches its region count.
func (p *MemTable) UnmarshalBinary(b []byte) error {
	if len(b) < 8 {
		return fmt.Errorf("memory table payload: %d bytes, want at least 8", len(b))
	}
	n := wire.Uint32(b)
	if n > MaxMemTableRegions {
		return fmt.Errorf("memory table: nregions %d at offset 0 exceeds %d", n, MaxMemTableRegions)
	}
	if err := wantLen("memory table", b, 8+MemRegionSize*int(n)); err != nil {
		return err
	}
	p.Regions = make([]MemRegion, n)
	for i := range p.Regions {
		p.Regions[i] = decodeRegion(b[8+MemRegionSize*i:])
	}
	return nil
}

// SingleMemRegion is the ADD_MEM_REG / REM_MEM_REG payload (8 bytes of
// padding, then a region).
type SingleMemRegion struct {
	Region MemRegion
}

// MarshalBinary encodes the payload.
func (p SingleMemRegion) MarshalBinary() ([]byte, error) {
	return p.Region.appendTo(make([]byte, 8)), nil
}

// UnmarshalBinary decodes exactly 40 bytes.
func (p *SingleMemRegion) UnmarshalBinary(b []byte) error {
	if err := wantLen("single memory region", b, 8+MemRegionSize); err != nil {
		return err
	}
	p.Region = decodeRegion(b[8:])
	return nil
}

// LogPayload is the SET_LOG_BASE payload.
type LogPayload struct {
	Size   uint64
	Offset uint64
}

// MarshalBinary encodes the payload.
func (p LogPayload) MarshalBinary() ([]byte, error) {
	return wire.AppendUint64(wire.AppendUint64(nil, p.Size), p.Offset), nil
}

// UnmarshalBinary decodes exactly 16 bytes.
func (p *LogPayload) UnmarshalBinary(b []byte) error {
	if err := wantLen("log", b, 16); err != nil {
		return err
	}
	p.Size, p.Offset = wire.Uint64(b), wire.Uint64(b[8:])
	return nil
}

// Config flags.
const (
	ConfigFlagWritable  = 0
	ConfigFlagMigration = 1
)

// ConfigPayload is the GET_CONFIG / SET_CONFIG payload.
type ConfigPayload struct {
	Offset uint32
	Flags  uint32
	Data   []byte // len(Data) is the size field
}

// MarshalBinary encodes the payload.
func (p ConfigPayload) MarshalBinary() ([]byte, error) {
	if len(p.Data) > MaxConfigSize {
		return nil, fmt.Errorf("config: size %d exceeds %d", len(p.Data), MaxConfigSize)
	}
	b := wire.AppendUint32(nil, p.Offset)
	b = wire.AppendUint32(b, uint32(len(p.Data)))
	b = wire.AppendUint32(b, p.Flags)
	return append(b, p.Data...), nil
}

// UnmarshalBinary decodes a payload whose length is 12 + its size field.
func (p *ConfigPayload) UnmarshalBinary(b []byte) error {
	if len(b) < 12 {
		return fmt.Errorf("config payload: %d bytes, want at least 12", len(b))
	}
	size := wire.Uint32(b[4:])
	if size > MaxConfigSize {
		return fmt.Errorf("config: size %d at offset 4 exceeds %d", size, MaxConfigSize)
	}
	if err := wantLen("config", b, 12+int(size)); err != nil {
		return err
	}
	p.Offset, p.Flags = wire.Uint32(b), wire.Uint32(b[8:])
	p.Data = append([]byte(nil), b[12:]...)
	return nil
}

// VringArea is the VRING_HOST_NOTIFIER_MSG payload.
type VringArea struct {
	U64    uint64 // b0–7 vring, b8 no fd
	Size   uint64
	Offset uint64
}

// MarshalBinary encodes the payload.
func (p VringArea) MarshalBinary() ([]byte, error) {
	b := wire.AppendUint64(nil, p.U64)
	b = wire.AppendUint64(b, p.Size)
	return wire.AppendUint64(b, p.Offset), nil
}

// UnmarshalBinary decodes exactly 24 bytes.
func (p *VringArea) UnmarshalBinary(b []byte) error {
	if err := wantLen("vring area", b, 24); err != nil {
		return err
	}
	p.U64, p.Size, p.Offset = wire.Uint64(b), wire.Uint64(b[8:]), wire.Uint64(b[16:])
	return nil
}

// InflightPayload is the GET_INFLIGHT_FD / SET_INFLIGHT_FD payload.
type InflightPayload struct {
	MmapSize   uint64
	MmapOffset uint64
	NumQueues  uint16
	QueueSize  uint16
}

// InflightPayloadSize is the encoded size of InflightPayload.
const InflightPayloadSize = 24

// MarshalBinary encodes the payload.
func (p InflightPayload) MarshalBinary() ([]byte, error) {
	b := wire.AppendUint64(nil, p.MmapSize)
	b = wire.AppendUint64(b, p.MmapOffset)
	b = wire.AppendUint16(b, p.NumQueues)
	b = wire.AppendUint16(b, p.QueueSize)
	return wire.AppendUint32(b, 0), nil
}

// UnmarshalBinary decodes exactly 24 bytes.
func (p *InflightPayload) UnmarshalBinary(b []byte) error {
	if err := wantLen("inflight", b, InflightPayloadSize); err != nil {
		return err
	}
	p.MmapSize, p.MmapOffset = wire.Uint64(b), wire.Uint64(b[8:])
	p.NumQueues, p.QueueSize = wire.Uint16(b[16:]), wire.Uint16(b[18:])
	return nil
}

// SharedObject is the 16-byte UUID payload.
type SharedObject struct{ UUID [16]byte }

// MarshalBinary encodes the payload.
func (p SharedObject) MarshalBinary() ([]byte, error) { return append([]byte(nil), p.UUID[:]...), nil }

// UnmarshalBinary decodes exactly 16 bytes.
func (p *SharedObject) UnmarshalBinary(b []byte) error {
	if err := wantLen("shared object", b, 16); err != nil {
		return err
	}
	copy(p.UUID[:], b)
	return nil
}

// DeviceStateFd is the SET_DEVICE_STATE_FD payload.
type DeviceStateFd struct {
	Direction uint32
	Phase     uint32
}

// MarshalBinary encodes the payload.
func (p DeviceStateFd) MarshalBinary() ([]byte, error) {
	return wire.AppendUint32(wire.AppendUint32(nil, p.Direction), p.Phase), nil
}

// UnmarshalBinary decodes exactly 8 bytes.
func (p *DeviceStateFd) UnmarshalBinary(b []byte) error {
	if err := wantLen("device state fd", b, 8); err != nil {
		return err
	}
	p.Direction, p.Phase = wire.Uint32(b), wire.Uint32(b[4:])
	return nil
}

// ShmemMapFlagWritable is bit 0 of ShmemMapReq.Flags.
const ShmemMapFlagWritable = 1

// ShmemMapReq is the SHMEM_MAP / SHMEM_UNMAP payload.
type ShmemMapReq struct {
	ShmID     uint8
	FdOffset  uint64
	ShmOffset uint64
	Len       uint64
	Flags     uint64
}

// ShmemMapReqSize is the encoded size of ShmemMapReq.
const ShmemMapReqSize = 40

// MarshalBinary encodes the payload.
func (p ShmemMapReq) MarshalBinary() ([]byte, error) {
	b := make([]byte, 8)
	b[0] = p.ShmID
	b = wire.AppendUint64(b, p.FdOffset)
	b = wire.AppendUint64(b, p.ShmOffset)
	b = wire.AppendUint64(b, p.Len)
	return wire.AppendUint64(b, p.Flags), nil
}

// UnmarshalBinary decodes exactly 40 bytes.
func (p *ShmemMapReq) UnmarshalBinary(b []byte) error {
	if err := wantLen("shmem map", b, ShmemMapReqSize); err != nil {
		return err
	}
	p.ShmID = b[0]
	p.FdOffset, p.ShmOffset = wire.Uint64(b[8:]), wire.Uint64(b[16:])
	p.Len, p.Flags = wire.Uint64(b[24:]), wire.Uint64(b[32:])
	return nil
}

// ShmemConfig is the GET_SHMEM_CONFIG reply: region sizes by shmid.
type ShmemConfig struct {
	NRegions uint32
	Sizes    [MaxShmemRegions]uint64
}

// ShmemConfigSize is the encoded size of ShmemConfig.
const ShmemConfigSize = 8 + 8*MaxShmemRegions

// MarshalBinary encodes the payload.
func (p ShmemConfig) MarshalBinary() ([]byte, error) {
	b := make([]byte, 8, ShmemConfigSize)
	wire.PutUint32(b, p.NRegions)
	for _, s := range p.Sizes {
		b = wire.AppendUint64(b, s)
	}
	return b, nil
}

// UnmarshalBinary decodes exactly 2056 bytes.
func (p *ShmemConfig) UnmarshalBinary(b []byte) error {
	if err := wantLen("shmem config", b, ShmemConfigSize); err != nil {
		return err
	}
	p.NRegions = wire.Uint32(b)
	if p.NRegions > MaxShmemRegions {
		return fmt.Errorf("shmem config: nregions %d at offset 0 exceeds %d", p.NRegions, MaxShmemRegions)
	}
	for i := range p.Sizes {
		p.Sizes[i] = wire.Uint64(b[8+8*i:])
	}
	return nil
}

// payloadKind says what a request carries.
type payloadKind uint8

const (
	pNone payloadKind = iota
	pU64
	pState
	pAddr
	pMemTable
	pSingleRegion
	pLog
	pConfig
	pInflight
	pSharedObject
	pDeviceStateFd
	pRaw // defined by the spec but not decoded here (crypto, IOTLB)
)

// fdRule says how many fds a request may carry.
type fdRule uint8

const (
	fdsNone     fdRule = iota
	fdsOne             // exactly one
	fdsVring           // one unless the u64 payload has VringNoFd
	fdsPerTable        // one per memory-table region
	fdsOptional        // zero or one
)

type requestInfo struct {
	name    string
	payload payloadKind
	fds     fdRule
}

var requests = [...]requestInfo{
	ReqGetFeatures:         {"GET_FEATURES", pNone, fdsNone},
	ReqSetFeatures:         {"SET_FEATURES", pU64, fdsNone},
	ReqSetOwner:            {"SET_OWNER", pNone, fdsNone},
	ReqResetOwner:          {"RESET_OWNER", pNone, fdsNone},
	ReqSetMemTable:         {"SET_MEM_TABLE", pMemTable, fdsPerTable},
	ReqSetLogBase:          {"SET_LOG_BASE", pLog, fdsOne},
	ReqSetLogFd:            {"SET_LOG_FD", pNone, fdsOne},
	ReqSetVringNum:         {"SET_VRING_NUM", pState, fdsNone},
	ReqSetVringAddr:        {"SET_VRING_ADDR", pAddr, fdsNone},
	ReqSetVringBase:        {"SET_VRING_BASE", pState, fdsNone},
	ReqGetVringBase:        {"GET_VRING_BASE", pState, fdsNone},
	ReqSetVringKick:        {"SET_VRING_KICK", pU64, fdsVring},
	ReqSetVringCall:        {"SET_VRING_CALL", pU64, fdsVring},
	ReqSetVringErr:         {"SET_VRING_ERR", pU64, fdsVring},
	ReqGetProtocolFeatures: {"GET_PROTOCOL_FEATURES", pNone, fdsNone},
	ReqSetProtocolFeatures: {"SET_PROTOCOL_FEATURES", pU64, fdsNone},
	ReqGetQueueNum:         {"GET_QUEUE_NUM", pNone, fdsNone},
	ReqSetVringEnable:      {"SET_VRING_ENABLE", pState, fdsNone},
	ReqSendRARP:            {"SEND_RARP", pU64, fdsNone},
	ReqNetSetMTU:           {"NET_SET_MTU", pU64, fdsNone},
	ReqSetBackendReqFd:     {"SET_BACKEND_REQ_FD", pNone, fdsOne},
	ReqIOTLBMsg:            {"IOTLB_MSG", pRaw, fdsNone},
	ReqSetVringEndian:      {"SET_VRING_ENDIAN", pState, fdsNone},
	ReqGetConfig:           {"GET_CONFIG", pConfig, fdsNone},
	ReqSetConfig:           {"SET_CONFIG", pConfig, fdsNone},
	ReqCreateCryptoSession: {"CREATE_CRYPTO_SESSION", pRaw, fdsNone},
	ReqCloseCryptoSession:  {"CLOSE_CRYPTO_SESSION", pU64, fdsNone},
	ReqPostcopyAdvise:      {"POSTCOPY_ADVISE", pNone, fdsNone},
	ReqPostcopyListen:      {"POSTCOPY_LISTEN", pNone, fdsNone},
	ReqPostcopyEnd:         {"POSTCOPY_END", pNone, fdsNone},
	ReqGetInflightFd:       {"GET_INFLIGHT_FD", pInflight, fdsNone},
	ReqSetInflightFd:       {"SET_INFLIGHT_FD", pInflight, fdsOne},
	ReqGPUSetSocket:        {"GPU_SET_SOCKET", pNone, fdsOne},
	ReqResetDevice:         {"RESET_DEVICE", pNone, fdsNone},
	ReqVringKick:           {"VRING_KICK", pState, fdsNone},
	ReqGetMaxMemSlots:      {"GET_MAX_MEM_SLOTS", pNone, fdsNone},
	ReqAddMemReg:           {"ADD_MEM_REG", pSingleRegion, fdsOne},
	ReqRemMemReg:           {"REM_MEM_REG", pSingleRegion, fdsOptional},
	ReqSetStatus:           {"SET_STATUS", pU64, fdsNone},
	ReqGetStatus:           {"GET_STATUS", pNone, fdsNone},
	ReqGetSharedObject:     {"GET_SHARED_OBJECT", pSharedObject, fdsNone},
	ReqSetDeviceStateFd:    {"SET_DEVICE_STATE_FD", pDeviceStateFd, fdsOne},
	ReqCheckDeviceState:    {"CHECK_DEVICE_STATE", pNone, fdsNone},
	ReqGetShmemConfig:      {"GET_SHMEM_CONFIG", pNone, fdsNone},
}

var backendNames = [...]string{
	BackendIOTLBMsg:           "IOTLB_MSG",
	BackendConfigChangeMsg:    "CONFIG_CHANGE_MSG",
	BackendVringHostNotifier:  "VRING_HOST_NOTIFIER_MSG",
	BackendVringCall:          "VRING_CALL",
	BackendVringErr:           "VRING_ERR",
	BackendSharedObjectAdd:    "SHARED_OBJECT_ADD",
	BackendSharedObjectRemove: "SHARED_OBJECT_REMOVE",
	BackendSharedObjectLookup: "SHARED_OBJECT_LOOKUP",
	BackendShmemMap:           "SHMEM_MAP",
	BackendShmemUnmap:         "SHMEM_UNMAP",
}

// String names the request as the specification does.
func (r RequestType) String() string {
	if r >= reqFirst && r <= maxRequest {
		return requests[r].name
	}
	return fmt.Sprintf("request %d", uint32(r))
}

// String names the back-end request.
func (r BackendRequestType) String() string {
	if r >= 1 && r <= maxBackendRequest {
		return backendNames[r]
	}
	return fmt.Sprintf("back-end request %d", uint32(r))
}

// ErrUnknownRequest is returned for request codes this codec does not know.
var ErrUnknownRequest = errors.New("unknown request")

// Message is one decoded front-end request.
type Message struct {
	Header
	// Payload is one of U64, VringState, VringAddr, MemTable,
	// SingleMemRegion, LogPayload, ConfigPayload, InflightPayload,
	// SharedObject, DeviceStateFd, []byte (requests not decoded here) or
	// nil (no payload).
	Payload any
}

// Type is the request type.
func (m Message) Type() RequestType { return RequestType(m.Request) }

// DecodeMessage decodes the payload of a front-end request whose header
// was already read, and checks that the number of fds that came with it
// is what the request allows. It never panics on any input.
func DecodeMessage(h Header, payload []byte, nfds int) (Message, error) {
	m := Message{Header: h}
	rt := RequestType(h.Request)
	if err := h.Check(false); err != nil {
		return m, fmt.Errorf("%v: %w", rt, err)
	}
	if int(h.Size) != len(payload) {
		return m, fmt.Errorf("%v: header size %d but %d payload bytes", rt, h.Size, len(payload))
	}
	if rt < reqFirst || rt > maxRequest {
		return m, fmt.Errorf("%v: %w", rt, ErrUnknownRequest)
	}
	info := requests[rt]
	var err error
	switch info.payload {
	case pNone:
		if len(payload) != 0 {
			err = fmt.Errorf("%d-byte payload on a request that has none", len(payload))
		}
	case pU64:
		var p U64
		err = p.UnmarshalBinary(payload)
		m.Payload = p
	case pState:
		var p VringState
		err = p.UnmarshalBinary(payload)
		m.Payload = p
	case pAddr:
		var p VringAddr
		err = p.UnmarshalBinary(payload)
		m.Payload = p
	case pMemTable:
		var p MemTable
		err = p.UnmarshalBinary(payload)
		m.Payload = p
	case pSingleRegion:
		var p SingleMemRegion
		err = p.UnmarshalBinary(payload)
		m.Payload = p
	case pLog:
		var p LogPayload
		err = p.UnmarshalBinary(payload)
		m.Payload = p
	case pConfig:
		var p ConfigPayload
		err = p.UnmarshalBinary(payload)
		m.Payload = p
	case pInflight:
		var p InflightPayload
		err = p.UnmarshalBinary(payload)
		m.Payload = p
	case pSharedObject:
		var p SharedObject
		err = p.UnmarshalBinary(payload)
		m.Payload = p
	case pDeviceStateFd:
		var p DeviceStateFd
		err = p.UnmarshalBinary(payload)
		m.Payload = p
	case pRaw:
		m.Payload = append([]byte(nil), payload...)
	}
	if err != nil {
		return m, fmt.Errorf("%v: %w", rt, err)
	}
	if err := checkFds(rt, info.fds, m.Payload, nfds); err != nil {
		return m, fmt.Errorf("%v: %w", rt, err)
	}
	return m, nil
}

func checkFds(rt RequestType, rule fdRule, payload any, n int) error {
	want := -1 // -1: any of 0..1
	switch rule {
	case fdsNone:
		want = 0
	case fdsOne:
		want = 1
	case fdsVring:
		want = 1
		if payload.(U64).Value&VringNoFd != 0 {
			want = 0
		}
	case fdsPerTable:
		want = len(payload.(MemTable).Regions)
	case fdsOptional:
		if n <= 1 {
			return nil
		}
	}
	if n != want {
		if want < 0 {
			return fmt.Errorf("%d fds, want at most 1", n)
		}
		return fmt.Errorf("%d fds, want %d", n, want)
	}
	return nil
}

// BackendMessage is one decoded back-end channel request.
type BackendMessage struct {
	Header
	// Payload is one of ShmemMapReq, VringState, VringArea, SharedObject,
	// []byte (IOTLB) or nil (CONFIG_CHANGE_MSG).
	Payload any
}

// Type is the back-end request type.
func (m BackendMessage) Type() BackendRequestType { return BackendRequestType(m.Request) }

// DecodeBackendMessage decodes a request received on the back-end
// channel (what a front-end does; used by tests and tools) and checks its
// fd count. It never panics on any input.
func DecodeBackendMessage(h Header, payload []byte, nfds int) (BackendMessage, error) {
	m := BackendMessage{Header: h}
	rt := BackendRequestType(h.Request)
	if err := h.Check(false); err != nil {
		return m, fmt.Errorf("%v: %w", rt, err)
	}
	if int(h.Size) != len(payload) {
		return m, fmt.Errorf("%v: header size %d but %d payload bytes", rt, h.Size, len(payload))
	}
	var err error
	wantFds := 0
	switch rt {
	case BackendIOTLBMsg:
		m.Payload = append([]byte(nil), payload...)
	case BackendConfigChangeMsg:
		if len(payload) != 0 {
			err = fmt.Errorf("%d-byte payload on a request that has none", len(payload))
		}
	case BackendVringHostNotifier:
		var p VringArea
		err = p.UnmarshalBinary(payload)
		m.Payload = p
		if err == nil && p.U64&VringNoFd == 0 {
			wantFds = 1
		}
	case BackendVringCall, BackendVringErr:
		var p VringState
		err = p.UnmarshalBinary(payload)
		m.Payload = p
	case BackendSharedObjectAdd, BackendSharedObjectRemove, BackendSharedObjectLookup:
		var p SharedObject
		err = p.UnmarshalBinary(payload)
		m.Payload = p
	case BackendShmemMap, BackendShmemUnmap:
		var p ShmemMapReq
		err = p.UnmarshalBinary(payload)
		m.Payload = p
		if rt == BackendShmemMap {
			wantFds = 1
		}
	default:
		return m, fmt.Errorf("%v: %w", rt, ErrUnknownRequest)
	}
	if err != nil {
		return m, fmt.Errorf("%v: %w", rt, err)
	}
	if nfds != wantFds {
		return m, fmt.Errorf("%v: %d fds, want %d", rt, nfds, wantFds)
	}
	return m, nil
}
