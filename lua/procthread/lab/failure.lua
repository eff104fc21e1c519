-- failure: one of N workers fails (Lua error, os.exit(3), SIGSEGV, abort,
-- SIGKILL).  Each group runs under a supervisor that is itself a
-- sacrificial process, for both kinds (the same code): the lab survives a
-- crash that takes a thread group down, and sees it happen.
local util = require "procthread.lab.util"
local claims = require "procthread.lab.claims"

local E = {
  name = "failure",
  title = "one of N workers fails; what happens to the others",
  aspect = claims.by_name.failure.aspect,
  claim = claims.by_name.failure,
  params = {
    -- workers: group size (1 failing + siblings); work: seconds each sibling
    -- computes; fail_after: when the failing one fails
    full = { workers = 4, work = 0.4, fail_after = 0.05, trials = 3,
             modes = { "error", "exit", "segv", "abort", "sigkill" } },
    quick = { workers = 3, work = 0.25, fail_after = 0.05, trials = 1,
              modes = { "error", "exit", "segv", "abort", "sigkill" } },
    tiny = { workers = 2, work = 0.1, fail_after = 0.02, trials = 1, modes = { "error", "segv" } },
  },
  MODE_TEXT = { error = "Lua error", exit = "os.exit(3)", segv = "SIGSEGV", abort = "abort()", sigkill = "SIGKILL" },
}

E.rule = "A supervisor process spawns N workers of one kind: one fails after fail_after seconds, the N-1 siblings compute " ..
  "for `work` seconds and then send \"done\" on a pipe. Per failure mode: contained = the supervisor returned and all " ..
  "N-1 siblings finished, in every trial; group down = the supervisor died. Contradicted: some failure of a process was " ..
  "not contained, or no failure of a thread took its group down. Holds: every failure mode of a thread took its group down. " ..
  "Otherwise holds only for the modes that did (listed)."

-- The failing worker.
local function failing(mode, fail_after)
  local pt = require "procthread"
  pt.sleep(fail_after)
  if mode == "error" then error("deliberate Lua error", 0)
  elseif mode == "exit" then os.exit(3)
  elseif mode == "segv" then pt.fault("segv")
  elseif mode == "abort" then pt.fault("abort")
  elseif mode == "sigkill" then pt.fault("signal", 9) end
  return "survived its own failure?"
end

-- A sibling: compute for `work` seconds, then report on the pipe (a
-- message already written survives the death of its writer, and a pipe
-- holds no reference a killed process could leak).
local function sibling(work, done)
  local pt = require "procthread"
  local stop = pt.now() + work
  local x = 0
  while pt.now() < stop do
    for i = 1, 2000 do x = x + i % 3 end
  end
  if done then done:send("done") end
  return x
end

-- The supervisor: runs in a sacrificial process.
local function supervise(kind, mode, n, work, fail_after, done)
  local pt = require "procthread"
  local ws = { pt.spawn(kind, failing, mode, fail_after) }
  for i = 2, n do ws[i] = pt.spawn(kind, sibling, work, done) end
  local r1 = { ws[1]:join(work + fail_after + 20) }
  local finished = 0
  for i = 2, n do
    if ws[i]:join(work + 20) == true then finished = finished + 1 end
  end
  return finished, tostring(r1[2])
end

local function results_detail(ctx, key)
  local d = ctx.results.data.detail or {}
  ctx.results.data.detail = d
  d[key] = d[key] or {}
  return d[key]
end

function E.run(ctx)
  local pt, p = ctx.pt, ctx.params
  local has_pipe = type(pt.pipe) == "function"
  for _, mode in ipairs(p.modes) do
    for _, kind in ipairs({ "process", "thread" }) do
      local key = ("%s/%s"):format(kind, mode)
      local meta = { kind = kind, mode = mode }
      for t = 1, p.trials do
        ctx:update(("%s group, %s"):format(kind, E.MODE_TEXT[mode] or mode), t, p.trials)
        local done
        if has_pipe then
          local ok, pp = pcall(pt.pipe)
          if ok then done = pp end
        end
        io.stdout:flush(); io.stderr:flush()
        local r = util.pack(ctx:run_worker("process", p.work + p.fail_after + 30, supervise, kind, mode, p.workers, p.work, p.fail_after, done))
        local survived = r[1] == true
        local finished
        if done then
          -- count the "done" messages; the supervisor is gone, so every
          -- sibling that will ever report has reported
          finished = 0
          while done:recv(0.05) == "done" do finished = finished + 1 end
          done:close()
        elseif survived then finished = r[2] end
        if finished == nil then
          ctx:fail("finished/" .. key, meta, "the supervisor died and, without pt.pipe, its siblings' work cannot be counted", "workers")
        else
          ctx:add("finished/" .. key, meta, finished, "workers")
        end
        ctx:add("survived/" .. key, meta, survived and 1 or 0, "bool")
        local d = results_detail(ctx, key)
        d.supervisor = survived and "returned" or tostring(r[2])
        if survived then d.failing_worker = r[3] end
      end
    end
  end
end

-- per kind/mode: "contained" | "down" | "partial" (siblings lost, supervisor
-- alive) | "mixed" | nil
local function outcome(results, kind, mode)
  local s = results.series[("survived/%s/%s"):format(kind, mode)]
  local f = results.series[("finished/%s/%s"):format(kind, mode)]
  if not s or #s.samples == 0 then return nil end
  local n = (results.params.workers or 2) - 1
  local alive, dead = 0, 0
  for _, v in ipairs(s.samples) do if v == 1 then alive = alive + 1 else dead = dead + 1 end end
  local all_finished = f and #f.samples == #s.samples
  if all_finished then
    for _, v in ipairs(f.samples) do if v ~= n then all_finished = false end end
  end
  if dead == #s.samples then return "down" end
  if alive == #s.samples then return all_finished and "contained" or "partial" end
  return "mixed"
end
E.outcome = outcome

local function finished_text(results, kind, mode)
  local f = results.series[("finished/%s/%s"):format(kind, mode)]
  local n = (results.params.workers or 2) - 1
  if not f or #f.samples == 0 then return "?" end
  local sum = 0
  for _, v in ipairs(f.samples) do sum = sum + v end
  return ("%d/%d"):format(sum, n * #f.samples)
end

function E.verdict(results)
  local v = {}
  local modes = results.params.modes or {}
  local by = { process = {}, thread = {} }
  local measured = { process = 0, thread = 0 }
  for _, kind in ipairs({ "process", "thread" }) do
    local groups, order, fin = {}, {}, {}
    for _, m in ipairs(modes) do
      local o = outcome(results, kind, m)
      by[kind][m] = o
      if o then
        measured[kind] = measured[kind] + 1
        if not groups[o] then groups[o] = {}; order[#order + 1] = o; fin[o] = { 0, 0 } end
        local g = groups[o]
        g[#g + 1] = E.MODE_TEXT[m] or m
        local a, b = finished_text(results, kind, m):match("(%d+)/(%d+)")
        if a then fin[o][1] = fin[o][1] + tonumber(a); fin[o][2] = fin[o][2] + tonumber(b) end
      end
    end
    local parts = {}
    for _, o in ipairs(order) do
      parts[#parts + 1] = ("%s for %s (siblings finished %d/%d)"):format(o == "down" and "group down" or o,
        table.concat(groups[o], ", "), fin[o][1], fin[o][2])
    end
    v[kind] = #parts > 0 and table.concat(parts, "; ") or nil
  end
  if measured.process == 0 or measured.thread == 0 then
    v.verdict = "not measured"
    v.condition = "no failure mode measured for " .. (measured.process == 0 and "processes" or "threads")
    return v
  end
  local leaks, down, kept, kept_names = {}, {}, {}, {}
  for _, m in ipairs(modes) do
    local po, to = by.process[m], by.thread[m]
    if po and po ~= "contained" then leaks[#leaks + 1] = (E.MODE_TEXT[m] or m) .. " (" .. po .. ")" end
    if to == "down" then down[#down + 1] = E.MODE_TEXT[m] or m
    elseif to then
      kept[#kept + 1] = (E.MODE_TEXT[m] or m) .. " (" .. to .. ", siblings finished " .. finished_text(results, "thread", m) .. ")"
      kept_names[#kept_names + 1] = E.MODE_TEXT[m] or m
    end
  end
  if #leaks > 0 then
    v.verdict = "contradicted"
    v.condition = "a failing process affected the others: " .. table.concat(leaks, ", ")
  elseif #down == 0 then
    v.verdict = "contradicted"
    v.condition = "no failing thread took its group down"
  elseif #kept == 0 then
    v.verdict = "holds"
    v.condition = "every failure of one thread took the whole group down: " .. table.concat(down, ", ")
  else
    v.verdict = "conditional"
    v.condition = ("the failure is %s: that took the whole thread group down, while %s stayed in its thread"):format(
      table.concat(down, ", "), table.concat(kept, ", "))
  end
  v.reading = ("Every failing process was reaped by its supervisor while its siblings finished%s. In a thread group, %s took the whole process down%s."):format(
    #leaks > 0 and (" — except for " .. table.concat(leaks, ", ")) or "",
    #down > 0 and table.concat(down, ", ") or "no failure",
    #kept_names > 0 and (", while a " .. table.concat(kept_names, ", ") .. " stayed in its thread and the siblings finished their work") or "")
  return v
end

function E.table(results)
  local rows = {}
  for _, m in ipairs(results.params.modes or {}) do
    local row = { E.MODE_TEXT[m] or m }
    for _, kind in ipairs({ "process", "thread" }) do
      local o = outcome(results, kind, m)
      local d = results.data.detail and results.data.detail[kind .. "/" .. m] or {}
      row[#row + 1] = o and (o == "down" and "**group down**" or o) or "not measured"
      row[#row + 1] = finished_text(results, kind, m)
      row[#row + 1] = d.supervisor and (d.supervisor == "returned" and ("alive; failing worker: " .. tostring(d.failing_worker):match("[^\n]*")) or ("died: " .. d.supervisor:match("[^\n]*"))) or "—"
    end
    rows[#rows + 1] = row
  end
  return { header = { "failure", "process group", "siblings finished", "supervisor (process group)",
                      "thread group", "siblings finished", "supervisor (thread group)" }, rows = rows }
end

return E
