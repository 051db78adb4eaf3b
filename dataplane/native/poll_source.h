// Readiness for one fd, shared by PacketFd (TUN, socketpair) and UdpSocket.
//
//   uv_poll (level-triggered) ──readable──► T::Drain(): up to `capacity`
//                                            packets into the arena
//                                  └──────► ONE call onBatch(count)
//                             ──writable──► each onWritable() waiter, once
//
// Draining stops at `capacity` even when more is queued: the poll fires again
// on the next loop turn, after timers and other I/O had their share.
//
// The fd is owned from construction on. close() stops the poll handle and
// closes the fd only in the handle's close callback, so the fd number is never
// reused while epoll may still watch it.
//
// After close(): start/onWritable (and the subclasses' write/send) throw
// EBADF; pause/resume/close are no-ops; getters keep their last values.
//
// Busy polling: see busy_poll.h (every started source joins the Spinner).
#pragma once

#include <napi.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "buffer_watch.h"
#include "busy_poll.h"
#include "errors.h"

namespace weft {

// What one drain produced: `count` packets in the arena; `error` != 0 means
// reading must stop (an errno, or kEndOfStream) and `syscall` names the call.
struct Drained {
  uint32_t count;
  int error;
  const char* syscall;
};
constexpr int kEndOfStream = -1;
// The receive arena's memory was detached or shrunk: reading stops (and a
// resume() only reports it again).
constexpr int kArenaDetached = -2;
// A batch of one packet this small looks like request-response traffic.
constexpr uint32_t kConversationPacket = 512;

// Lives apart from the JS object: libuv closes handles asynchronously, and the
// close callback (which closes the fd) may run after the object is collected.
struct PollHandle {
  uv_poll_t poll;
  int fd;
};

template <class T>
class PollSource : public Napi::ObjectWrap<T>, public Spinnable {
 public:
  using Wrap = Napi::ObjectWrap<T>;

  explicit PollSource(const Napi::CallbackInfo& info) : Wrap(info) {}
  ~PollSource() override { Shutdown(); }

  int SpinFd() const override { return fd_; }
  bool SpinWanted() const override { return handle_ != nullptr && WantRead(); }
  void SpinRead() override { HandleEvents(0, UV_READABLE); }

  // The JS methods every source has; subclasses append their own.
  static std::vector<typename Wrap::PropertyDescriptor> SourceMembers() {
    return {
        Wrap::InstanceMethod("start", &PollSource::Start),
        Wrap::InstanceMethod("pause", &PollSource::Pause),
        Wrap::InstanceMethod("resume", &PollSource::Resume),
        Wrap::InstanceMethod("onWritable", &PollSource::OnWritable),
        Wrap::InstanceMethod("close", &PollSource::Close),
        Wrap::InstanceAccessor("fd", &PollSource::FdGetter, nullptr),
        Wrap::InstanceAccessor("closed", &PollSource::ClosedGetter, nullptr),
    };
  }

 protected:
  // Takes ownership of fd, also on failure (then the fd is closed and a JS
  // exception is pending).
  bool Adopt(Napi::Env env, int fd, const char* resource) {
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok) {
      ::close(fd);
      Napi::Error::New(env, "no event loop").ThrowAsJavaScriptException();
      return false;
    }
    auto* handle = new PollHandle;
    handle->fd = fd;
    int r = uv_poll_init(loop, &handle->poll, fd);
    if (r != 0) {
      delete handle;
      ::close(fd);
      ThrowSysError(env, -r, "uv_poll_init", "");
      return false;
    }
    handle->poll.data = this;
    Spinner::Get().SetLoop(loop);
    handle_ = handle;
    fd_ = fd;
    async_ = std::make_unique<Napi::AsyncContext>(env, resource);
    return true;
  }

  // The receive arena's buffers (subclasses add them): checked before every
  // drain, which writes into them.
  BufferWatch arena_watch_;

  bool IsOpen() const { return handle_ != nullptr; }
  int fd() const { return fd_; }

  // Throws EBADF naming `syscall` when closed.
  bool CheckOpen(Napi::Env env, const char* syscall) {
    if (handle_ != nullptr) return true;
    ThrowSysError(env, EBADF, syscall, "");
    return false;
  }

 private:
  // start(onBatch, onError?): onBatch(count) once per drain with count >= 1.
  // onError(err) once when reading stops on an error or end of stream (it
  // restarts with resume()); without onError the error is thrown uncaught.
  void Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckOpen(env, "start")) return;
    if (!info[0].IsFunction()) {
      ThrowTypeError(env, "onBatch must be a function");
      return;
    }
    if (!info[1].IsUndefined() && !info[1].IsFunction()) {
      ThrowTypeError(env, "onError must be a function");
      return;
    }
    on_batch_ = Napi::Persistent(info[0].As<Napi::Function>());
    on_error_.Reset();
    if (info[1].IsFunction()) {
      on_error_ = Napi::Persistent(info[1].As<Napi::Function>());
    }
    started_ = true;
    Spinner::Get().Add(this);
    KeepAlive();
    UpdateInterest();
  }

  void Pause(const Napi::CallbackInfo&) {
    paused_ = true;
    UpdateInterest();
  }

  void Resume(const Napi::CallbackInfo&) {
    paused_ = false;
    failed_ = false;
    UpdateInterest();
  }

  // onWritable(cb): cb() once, the next time the fd is writable. Waiters are
  // called in registration order; a close() drops them uncalled.
  void OnWritable(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckOpen(env, "onWritable")) return;
    if (!info[0].IsFunction()) {
      ThrowTypeError(env, "onWritable callback must be a function");
      return;
    }
    waiters_.push_back(Napi::Persistent(info[0].As<Napi::Function>()));
    KeepAlive();
    UpdateInterest();
  }

  void Close(const Napi::CallbackInfo&) {
    Shutdown();
    if (kept_) {
      kept_ = false;
      this->Unref();
    }
  }

  Napi::Value FdGetter(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), fd_);
  }

  Napi::Value ClosedGetter(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), handle_ == nullptr);
  }

  bool WantRead() const { return started_ && !paused_ && !failed_; }

  void UpdateInterest() {
    if (handle_ == nullptr) return;
    int want = (WantRead() ? UV_READABLE : 0) |
               (waiters_.empty() ? 0 : UV_WRITABLE);
    if (want == interest_) return;
    if (want == 0) {
      uv_poll_stop(&handle_->poll);
    } else {
      uv_poll_start(&handle_->poll, want, OnPoll);
    }
    interest_ = want;
  }

  static void OnPoll(uv_poll_t* poll, int status, int events) {
    auto* self = static_cast<PollSource*>(poll->data);
    if (self != nullptr) self->HandleEvents(status, events);
  }

  void HandleEvents(int status, int events) {
    Napi::Env env = this->Env();
    Napi::HandleScope scope(env);
    if (status < 0) {
      // libuv stopped the handle (POLLERR). Give readers and writers their
      // turn so that the syscalls themselves report what is wrong.
      interest_ = 0;
      events = UV_READABLE | UV_WRITABLE;
    }
    if ((events & UV_WRITABLE) != 0 && !waiters_.empty()) {
      std::vector<Napi::FunctionReference> ready = std::move(waiters_);
      waiters_.clear();
      UpdateInterest();
      for (Napi::FunctionReference& cb : ready) {
        if (handle_ == nullptr) return;
        CallJs(cb.Value(), {});
      }
    }
    if (handle_ == nullptr) return;
    if ((events & UV_READABLE) != 0 && WantRead()) {
      Drained d = arena_watch_.Intact(env)
                      ? static_cast<T*>(this)->Drain()
                      : Drained{0, kArenaDetached, "read"};
      if (d.error == 0 && d.count == 0 && status < 0) {
        d.error = -status;
        d.syscall = "poll";
      }
      if (d.error != 0) {
        failed_ = true;
        UpdateInterest();
      }
      if (d.count > 0) {
        CallJs(on_batch_.Value(), {Napi::Number::New(env, d.count)});
        if (handle_ == nullptr) return;
      }
      if (d.error != 0) ReportReadError(env, d);
      if (handle_ == nullptr) return;
      UpdateInterest();
      if (d.count > 0) {
        Spinner::Get().AfterBatch(
            d.count == 1 &&
            static_cast<T*>(this)->FirstLength() <= kConversationPacket);
      }
      return;
    }
    UpdateInterest();
  }

  void ReportReadError(Napi::Env env, const Drained& d) {
    Napi::Error err =
        d.error == kEndOfStream     ? EndOfStream(env, d.syscall)
        : d.error == kArenaDetached ? DetachedError(env, d.syscall,
                                                    "the receive arena")
                                    : SysError(env, d.error, d.syscall, "");
    if (on_error_.IsEmpty()) {
      napi_fatal_exception(env, err.Value());
    } else {
      CallJs(on_error_.Value(), {err.Value()});
    }
  }

  static Napi::Error EndOfStream(Napi::Env env, const char* syscall) {
    Napi::Error err =
        Napi::Error::New(env, std::string(syscall) + ": end of stream");
    err.Set("code", Napi::String::New(env, "EOF"));
    err.Set("syscall", Napi::String::New(env, syscall));
    return err;
  }

  // MakeCallback runs the nextTick and microtask queues afterwards, as for any
  // I/O callback; an exception becomes an uncaughtException, never swallowed.
  void CallJs(Napi::Function fn, const std::initializer_list<napi_value>& args) {
    Napi::Env env = this->Env();
    fn.MakeCallback(this->Value(), args, *async_);
    if (env.IsExceptionPending()) {
      Napi::Error err = env.GetAndClearPendingException();
      napi_fatal_exception(env, err.Value());
    }
  }

  // Callbacks need the JS object alive: strong from start()/onWritable() on
  // until close().
  void KeepAlive() {
    if (kept_) return;
    kept_ = true;
    this->Ref();
  }

  void Shutdown() {
    Spinner::Get().Remove(this);
    if (handle_ != nullptr) {
      uv_poll_stop(&handle_->poll);
      handle_->poll.data = nullptr;
      uv_close(reinterpret_cast<uv_handle_t*>(&handle_->poll),
               [](uv_handle_t* h) {
                 auto* handle = reinterpret_cast<PollHandle*>(h);
                 ::close(handle->fd);
                 delete handle;
               });
      handle_ = nullptr;
    }
    fd_ = -1;
    interest_ = 0;
    started_ = false;
    waiters_.clear();
    on_batch_.Reset();
    on_error_.Reset();
  }

  PollHandle* handle_ = nullptr;
  int fd_ = -1;
  int interest_ = 0;
  bool started_ = false;
  bool paused_ = false;
  bool failed_ = false;
  bool kept_ = false;
  Napi::FunctionReference on_batch_;
  Napi::FunctionReference on_error_;
  std::vector<Napi::FunctionReference> waiters_;
  std::unique_ptr<Napi::AsyncContext> async_;
};

}  // namespace weft
