-- The backend experiment: its verdict rule on synthetic results, the wrk
-- report parser, and the experiment itself in tiny mode (in a fresh
-- interpreter: it crashes workers on purpose, and a killed process keeps
-- its shared-table counts in the arena of the interpreter that ran it).
local H = require "helper"
local lab = require "procthread.lab"
local json = require "procthread.lab.json"

local E = assert(lab.load("backend"))

-- Synthetic results: rps per side and kind, errors, crash flags.
local function results(t)
  local r = { params = { phases_before = 1, phases_after = 1, phase_s = 1, crash_delay = 0.2, connections = 2 },
              series = {}, data = { client = "wrk", server = {} } }
  -- v: one phase's value, or a list of phases
  local function add(key, v, failed)
    r.series[key] = { meta = {}, samples = type(v) == "table" and v or v ~= nil and { v } or {}, failed = failed or 0, errors = {} }
  end
  for _, kind in ipairs({ "process", "thread" }) do
    local k = t[kind]
    add("rps/" .. kind .. "/before", k.before)
    add("rps/" .. kind .. "/after", k.after)
    add("p99/" .. kind .. "/before", 0.001)
    add("errors/" .. kind .. "/crash", k.lost or 0)
    add("errors/" .. kind .. "/after", 0, k.refused and 1 or 0)
    r.data.server[kind] = { crashed = k.crashed ~= false, crash_time = 1.2 }
  end
  return r
end

describe("backend experiment", function()
  H.no_leaks()

  describe("verdict", function()
    it("holds when the process server serves on losing the one request in flight and the thread pool goes down", function()
      local v = E.verdict(results { process = { before = 1000, after = 900, lost = 1 },
                                    thread = { before = 1200, after = 0, refused = true } })
      assert.are.equal("holds", v.verdict)
      assert.matches("losing 1 request", v.condition)
      assert.matches("1.20× the processes' rate", v.condition, 1, true)
      assert.is_string(v.process); assert.is_string(v.thread); assert.is_string(v.reading)
    end)

    it("holds only with retries when the process server lost more than the request in flight", function()
      local v = E.verdict(results { process = { before = 1000, after = 900, lost = 5 },
                                    thread = { before = 1000, after = 0 } })
      assert.are.equal("conditional", v.verdict)
      assert.matches("5 requests failed", v.condition)
    end)

    it("is contradicted when the process server did not serve on, or the thread pool did", function()
      local at = E.SERVE_ON * 1000
      local v = E.verdict(results { process = { before = 1000, after = at - 1, lost = 1 }, thread = { before = 1000, after = 0 } })
      assert.are.equal("contradicted", v.verdict)
      assert.matches("did not serve on", v.condition)
      v = E.verdict(results { process = { before = 1000, after = at + 1, lost = 1 }, thread = { before = 1000, after = 0 } })
      assert.are.equal("holds", v.verdict)
      local down = E.DOWN * 1000
      v = E.verdict(results { process = { before = 1000, after = 1000, lost = 0 }, thread = { before = 1000, after = down + 1 } })
      assert.are.equal("contradicted", v.verdict)
      assert.matches("kept serving", v.condition)
      v = E.verdict(results { process = { before = 1000, after = 1000, lost = 0 }, thread = { before = 1000, after = down - 1 } })
      assert.are.equal("holds", v.verdict)
    end)

    it("applies the noise rule: phases after that overlap the mark are within noise", function()
      -- before 1000 /s in every phase; after: p10 440, p90 680 around the 500 mark
      local v = E.verdict(results { process = { before = { 1000, 1000, 1000 }, after = { 400, 600, 700 }, lost = 1 },
                                    thread = { before = 1000, after = 0 } })
      assert.are.equal("within noise", v.verdict)
      assert.matches("^the phases after the crash overlap the mark", v.condition)
      -- the same median (600) with the phases wholly above the mark serves on
      v = E.verdict(results { process = { before = { 1000, 1000, 1000 }, after = { 560, 600, 700 }, lost = 1 },
                              thread = { before = 1000, after = 0 } })
      assert.are.equal("holds", v.verdict)
    end)

    it("says LuaSocket is missing, in the claims table and in the charts", function()
      local status, out = H.fresh([[
        package.preload.socket = function() error("module 'socket' not found") end
        local lab = require "procthread.lab"
        local report = require "procthread.lab.report"
        local exp = assert(lab.load("backend"))
        local res = lab.run_experiment(exp, { mode = "tiny", progress = false })
        local dir = os.tmpname(); os.remove(dir)
        assert(os.execute("mkdir " .. dir))
        assert(report.render({ mode = "tiny", machine = {}, experiments = { res } }, dir))
        for _, f in ipairs({ "REPORT.md", "backend-throughput.svg", "backend-p99.svg" }) do
          local h = assert(io.open(dir .. "/" .. f)); print("FILE " .. f .. " " .. h:read("*a"):gsub("\n", " ")); h:close()
        end
        os.execute("rm -rf " .. dir)
      ]])
      assert.are.equal(0, status, out)
      assert.matches("FILE REPORT.md [^\n]*| backend |[^\n]*not measured — LuaSocket is not installed %(Debian: lua%-socket%)", out)
      for _, f in ipairs({ "backend-throughput.svg", "backend-p99.svg" }) do
        assert.matches("FILE " .. f:gsub("%%-", "%%%%-") .. " [^\n]*no data: not measured — LuaSocket is not installed %(Debian: lua%-socket%)", out)
      end
    end)

    it("is not measured when a side served nothing or no handler crashed", function()
      local v = E.verdict(results { process = { before = 1000, after = 1000 }, thread = { before = nil, after = 0 } })
      assert.are.equal("not measured", v.verdict)
      v = E.verdict(results { process = { before = 1000, after = 1000, crashed = false }, thread = { before = 1000, after = 0 } })
      assert.are.equal("not measured", v.verdict)
      assert.matches("no handler of the process server crashed", v.condition)
    end)
  end)

  describe("wrk report", function()
    it("parses requests, duration, errors and percentiles", function()
      local r = E.parse_wrk([[
Running 1s test @ http://127.0.0.1:4000/
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    81.74us  103.78us   2.05ms   97.89%
  Latency Distribution
     50%   67.00us
     75%   89.00us
     90%   97.00us
     99%    1.43ms
  15142 requests in 1.10s, 0.87MB read
  Socket errors: connect 3, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:  13769.92
]])
      assert.are.equal(15142, r.requests)
      assert.are.equal(15138, r.ok)
      assert.are.equal(10, r.errors)
      assert.is_true(math.abs(r.duration - 1.1) < 1e-9)
      assert.is_true(math.abs(r.p50 - 67e-6) < 1e-12)
      assert.is_true(math.abs(r.p99 - 1.43e-3) < 1e-12)
    end)

    it("says so when every connection was refused, and fails on garbage", function()
      local r = E.parse_wrk("unable to connect to 127.0.0.1:4000 Connection refused\n")
      assert.are.equal(0, r.ok)
      assert.is_true(r.refused)
      assert.is_nil(r.errors)
      local none, err = E.parse_wrk("wrk: command not found\n")
      assert.is_nil(none)
      assert.matches("no report", err)
    end)
  end)

  describe("tiny run", function()
    local function have(cmd) return lab.execute(cmd .. " >/dev/null 2>&1") end

    local function run(client)
      local status, out = H.fresh(([[
        local lab = require "procthread.lab"
        local json = require "procthread.lab.json"
        local exp = assert(lab.load("backend"))
        exp.params.tiny.client = %q
        local res = lab.run_experiment(exp, { mode = "tiny", progress = false })
        -- nothing left behind: every server and client process reaped
        local f = io.popen("cat /proc/" .. io.open("/proc/self/stat"):read("*l"):match("^%%d+") .. "/task/*/children")
        local kids = f:read("*a"); f:close()
        local n = 0
        for pid in kids:gmatch("%%d+") do
          local c = io.open("/proc/" .. pid .. "/comm")
          local comm = c and c:read("*l"); if c then c:close() end
          if comm and comm ~= "sh" and comm ~= "cat" then n = n + 1 end
        end
        print("CHILDREN " .. n)
        print("RESULT " .. json.encode(res))
      ]]):format(client))
      assert.are.equal(0, status, out)
      assert.matches("CHILDREN 0", out, 1, true)
      local res = json.decode(assert(out:match("RESULT ([^\n]+)")))
      return res, out
    end

    local function check(res)
      assert.is_nil(res.error)
      local srv = res.data.server
      -- both servers answered before the crash, and a handler crashed in each
      for _, kind in ipairs({ "process", "thread" }) do
        local s = res.series["rps/" .. kind .. "/before"]
        assert.is_true(#s.samples == 1 and s.samples[1] > 0, kind .. " served nothing before the crash")
        assert.is_true(srv[kind].crashed, kind .. ": no handler crashed")
        assert.is_true(srv[kind].served > 0)
      end
      -- the thread-pool server died of the SIGSEGV; its clients fail from then on
      assert.is_false(srv.thread.survived)
      assert.are.equal("killed by signal 11 (SIGSEGV)", srv.thread.ended)
      assert.are.equal(0, res.series["rps/thread/after"].samples[1])
      -- the process server ran on with a replaced worker and kept serving
      assert.is_true(srv.process.survived)
      assert.are.equal(1, srv.process.deaths)
      assert.are.equal(1, srv.process.restarts)
      assert.are.equal("worker died: killed by signal 11 (SIGSEGV)", srv.process.reasons[1])
      assert.is_true(srv.process.clean_close)
      assert.is_true(res.series["rps/process/after"].samples[1] > 0)
      local lost = res.series["errors/process/crash"].samples[1] + res.series["errors/process/after"].samples[1]
      assert.is_true(lost <= 1, "the process server lost " .. lost .. " requests")
      assert.is_true(lab.VERDICTS[res.verdict.verdict])
      assert.are_not.equal("not measured", res.verdict.verdict)
      -- the verdict is a function of what was recorded
      assert.are.same(res.verdict, lab.verdict(E, res))
      local charts = E.charts(res)
      assert.are.equal(2, #charts)
      assert.are.equal(3, #charts[1].series[1].points)
      local tables = E.table(res)
      assert.are.equal(6, #tables[1].rows)
    end

    -- #noasan: under AddressSanitizer (GCC 12's libasan) the process
    -- server's pool:close(10) times out now and then (2 runs in 5 under
    -- load), and the cause is the sanitizer's, not ours.  gdb on the stuck
    -- pool worker (a process with one thread) showed it in free() ->
    -- __asan::Allocator::QuarantineChunk -> SizeClassAllocator64::
    -- GetFromAllocator (class 36) -> __sanitizer::Mutex::Lock -> FutexWait,
    -- the same frames both times: a region lock of ASan's allocator, held
    -- by another thread of the server process (the pool's watcher thread,
    -- which runs while workers are forked) at the fork and never released
    -- in the child.  GCC 12's ASan takes no allocator lock across fork (glibc
    -- malloc does, in its fork handlers), so a child forked while another
    -- thread allocates may deadlock at its first refill of that size class.
    it("with the built-in Lua client #noasan", function()
      check(run("builtin"))
    end)

    it("with wrk #noasan", function()
      if not have("command -v wrk") then
        pending("wrk is not installed (Debian: wrk)")
        return
      end
      local res = run("wrk")
      assert.are.equal("wrk", res.data.client)
      check(res)
    end)
  end)
end)
