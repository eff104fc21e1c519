-- procthread.lab.report: REPORT.md, results.json and the SVG charts of a
-- results document (what procthread.lab.run returned, or a results.json
-- read back).
local lab = require "procthread.lab"
local claims = require "procthread.lab.claims"
local format = require "procthread.lab.format"
local json = require "procthread.lab.json"
local stats = require "procthread.lab.stats"
local svg = require "procthread.lab.svg"
local util = require "procthread.lab.util"

local M = {}

-- A Ctrl-C raised inside a pcall of the report goes on: the user asked to
-- stop, not for a chart saying "chart failed: interrupted!".
local function reraise_interrupt(err)
  if type(err) == "string" and err:find("interrupted!", 1, true) then error(err, 0) end
end

-- A Markdown table cell: pipes escaped, on one line.
local function md_cell(s)
  s = tostring(s == nil and "" or s)
  return (s:gsub("|", "\\|"):gsub("\n", " "))
end

-- A Markdown table row of the first n cells.
local function md_row(cells, n)
  local t = {}
  for i = 1, n do t[i] = md_cell(cells[i]) end
  return "| " .. table.concat(t, " | ") .. " |"
end

local function md_table(header, rows)
  local o = { md_row(header, #header) }
  local sep = {}
  for i = 1, #header do sep[i] = "---" end
  o[#o + 1] = "|" .. table.concat(sep, "|") .. "|"
  for _, r in ipairs(rows) do o[#o + 1] = md_row(r, #header) end
  return table.concat(o, "\n")
end
M.md_table = md_table

function M.verdict_text(v) return lab.verdict_text(v, true) end

-- Experiments of the document, by name.
local function by_name(doc)
  local t = {}
  for _, e in ipairs(doc.experiments or {}) do t[e.name] = e end
  return t
end

local function load_exp(res)
  local id = res.source and lab.is_file_name(res.source) and res.source or res.name
  local exp = lab.load(id)
  return exp
end

-- One row per experiment run; with `all` (or a run of the whole lab) also
-- a row for each built-in claim that was not run.
function M.claims_rows(doc, all)
  local rows, seen = {}, {}
  local have = by_name(doc)
  local function row(name, res)
    local known = claims.by_name[name] or {}
    if not res then
      local present = lab.load(name)
      return { known.aspect or name, ("process: %s; thread: %s"):format(known.process or "?", known.thread or "?"),
               "—", "—", present and "not measured — not run" or "not measured — experiment not present" }
    end
    local v = res.verdict or {}
    local claim = res.claim or {}
    return { res.aspect or known.aspect or name,
             ("process: %s; thread: %s"):format(claim.process or known.process or "?", claim.thread or known.thread or "?"),
             v.process or "—", v.thread or "—", M.verdict_text(v) }
  end
  all = all or doc.complete
  for _, name in ipairs(claims.order) do
    if all or have[name] then rows[#rows + 1] = row(name, have[name]) end
    seen[name] = true
  end
  for _, e in ipairs(doc.experiments or {}) do
    if not seen[e.name] then rows[#rows + 1] = row(e.name, e); seen[e.name] = true end
  end
  return rows
end

local function machine_lines(m)
  m = m or {}
  local la = function(t) return t and table.concat(t, " ") or "?" end
  return {
    ("- CPU: %s, %s cores; memory %s MiB"):format(m.cpu_model or "?", tostring(m.cores or "?"), tostring(m.mem_total_mib or "?")),
    ("- Kernel: %s; Lua: %s; procthread %s"):format(m.kernel or "?", m.lua or "?", tostring(m.procthread or "?")),
    ("- Load average before: %s; after: %s; CPU used by other work during the run: %s"):format(la(m.loadavg_before), la(m.loadavg_after),
      type(m.other_cores) == "number" and ("%.2f cores"):format(m.other_cores) or "?"),
    ("- Date: %s"):format(m.date or "?"),
  }
end

local function failures_text(res)
  local keys, cut = {}, {}
  for k, s in pairs(res.series or {}) do
    if (s.failed or 0) > 0 then keys[#keys + 1] = k end
    if s.truncated then cut[#cut + 1] = ("`%s` (%s samples)"):format(k, s.truncated) end
  end
  table.sort(keys); table.sort(cut)
  local o = {}
  if #cut > 0 then o[#o + 1] = "- stopped by the time budget: " .. table.concat(cut, ", ") end
  if #keys == 0 and #o == 0 then return nil end
  for _, k in ipairs(keys) do
    local s = res.series[k]
    local msgs = {}
    for _, e in ipairs(s.errors or {}) do
      msgs[#msgs + 1] = ("%s (x%d)"):format((tostring(e.message):match("[^\n]*")), e.count or 1)
    end
    o[#o + 1] = ("- `%s`: %d failed of %d — %s"):format(k, s.failed, s.failed + #(s.samples or {}), table.concat(msgs, "; "))
  end
  return table.concat(o, "\n")
end

local function generic_table(res)
  local keys = {}
  for k in pairs(res.series or {}) do keys[#keys + 1] = k end
  table.sort(keys)
  local rows = {}
  for _, k in ipairs(keys) do
    local s = res.series[k]
    local sm = stats.summary(s.samples, s.failed)
    local f = function(v) return format.value(v, s.unit) end
    rows[#rows + 1] = { k, f(sm.median), f(sm.p10) .. " – " .. f(sm.p90), f(sm.min) .. " – " .. f(sm.max), sm.n, sm.failed }
  end
  return { header = { "series", "median", "p10 – p90", "min – max", "n", "failed" }, rows = rows }
end

local function write_file(path, s)
  local f, err = io.open(path, "wb")
  if not f then return nil, err end
  local ok, werr = f:write(s)
  f:close()
  if not ok then return nil, werr end
  return true
end

-- The note on other work, from the CPU time other processes used while
-- the lab ran (not the load average, which lags a minute behind); nil
-- when they used less than a quarter of the cores.
function M.load_note(m)
  m = m or {}
  local other, cores = m.other_cores, m.cores
  if type(other) ~= "number" or type(cores) ~= "number" or other < 0.25 * cores then return nil end
  return ("**Note:** other work used %.2f of the %d cores on average while the lab ran: it competed for the CPUs, which shows most in the timings that depend on scheduling (spin handoffs, wake-up after join, speedups)."):format(other, cores)
end

-- Render into directory `out`.  opts.json (default true) also writes
-- results.json.  Returns the list of files written, or nil and a message.
function M.render(doc, out, opts)
  opts = opts or {}
  local written = {}
  local md = {}
  local function add(s) md[#md + 1] = s or "" end
  add("# procthread lab: process vs thread, measured")
  add()
  add(("Mode: %s. Every verdict below is computed from the samples in `results.json` by the rule stated in its section (see docs/lab.md); none is written by hand."):format(doc.mode or "full"))
  add()
  add("## The claims")
  add()
  add(md_table({ "aspect", "the claim", "measured: processes", "measured: threads", "verdict" }, M.claims_rows(doc, opts.all)))
  add()
  add("## Machine")
  add()
  for _, l in ipairs(machine_lines(doc.machine)) do add(l) end
  add(("- Lab run time: %.1f s"):format(doc.elapsed or 0))
  local note = M.load_note(doc.machine)
  if note then add("- " .. note) end
  add()
  -- sections in the order of the claims table, then the others as run
  local order, rank = {}, {}
  for i, n in ipairs(claims.order) do rank[n] = i end
  for i, res in ipairs(doc.experiments or {}) do order[i] = { res = res, i = i } end
  table.sort(order, function(a, b)
    local ra, rb = rank[a.res.name] or (100 + a.i), rank[b.res.name] or (100 + b.i)
    if ra ~= rb then return ra < rb end
    return a.i < b.i
  end)
  for _, o in ipairs(order) do
    local res = o.res
    local exp = load_exp(res)
    add(("## %s%s"):format(res.name, res.title and (": " .. res.title) or ""))
    add()
    local claim = res.claim or {}
    add(("**Claim** (%s): process — %s; thread — %s."):format(res.aspect or res.name, claim.process or "?", claim.thread or "?"))
    add()
    add("**Verdict:** " .. M.verdict_text(res.verdict))
    add()
    local rule = (exp and exp.rule) or res.rule
    if rule then add("**Rule:** " .. rule); add() end
    if res.error then
      add("**The experiment stopped with an error:** `" .. md_cell((res.error:match("[^\n]*"))) .. "`")
      add()
    end
    local tbl
    if exp and exp.table then
      local ok, t = pcall(exp.table, res)
      if not ok then reraise_interrupt(t) end
      if ok and type(t) == "table" then tbl = t
      else add("(table failed: " .. md_cell(t) .. ")"); add() end
    end
    tbl = tbl or generic_table(res)
    if tbl.header then tbl = { tbl } end
    for _, t in ipairs(tbl) do
      if t.rows and #t.rows > 0 then
        if t.caption then add(t.caption); add() end
        add(md_table(t.header, t.rows)); add()
      end
    end
    if exp and exp.charts then
      local ok, charts = pcall(exp.charts, res)
      if not ok then reraise_interrupt(charts) end
      if ok and type(charts) == "table" then
        local v = res.verdict or {}
        for _, c in ipairs(charts) do
          local file = c.file or (res.name .. ".svg")
          -- a chart is a file of the report's own folder: a plain name
          local bad_name = type(file) ~= "string" or file:find("/", 1, true) or file == ".." or file == "."
                           or file == ""
          -- a failed run draws no data, whatever it left; any chart
          -- without usable points says why
          local why = v.verdict == "not measured" and "not measured — " .. (v.condition or "?") or nil
          if res.error then c.no_data = why end
          c.no_data_reason = c.no_data_reason or why
          local okc, text
          if bad_name then
            okc, text = false, ("chart file name %q is not a plain file name"):format(tostring(file))
          else
            okc, text = pcall(svg.chart, c)
            if not okc then reraise_interrupt(text) end
          end
          if okc then
            local w, err = write_file(out .. "/" .. file, text)
            if not w then return nil, "cannot write " .. out .. "/" .. file .. ": " .. tostring(err) end
            written[#written + 1] = out .. "/" .. file
            add(("![%s](%s)"):format(c.title or file, file)); add()
          else
            add("(chart failed: " .. md_cell(text) .. ")"); add()
          end
        end
      elseif not ok then
        add("(charts failed: " .. md_cell(charts) .. ")"); add()
      end
    end
    local v = res.verdict or {}
    if v.reading then add("**Reading:** " .. v.reading); add() end
    local ft = failures_text(res)
    if ft then add("**Failed or cut samples:**"); add(); add(ft); add() end
    add(("Parameters (%s): `%s`; run time %.1f s."):format(res.mode or doc.mode or "?", json.encode(res.params or {}), res.elapsed or 0))
    add()
  end
  local ok, err = write_file(out .. "/REPORT.md", table.concat(md, "\n") .. "\n")
  if not ok then return nil, "cannot write " .. out .. "/REPORT.md: " .. tostring(err) end
  table.insert(written, 1, out .. "/REPORT.md")
  if opts.json ~= false then
    ok, err = write_file(out .. "/results.json", json.encode(doc, "  ") .. "\n")
    if not ok then return nil, "cannot write " .. out .. "/results.json: " .. tostring(err) end
    table.insert(written, 2, out .. "/results.json")
  end
  return written
end

-- Markdown comparing two results documents (two machines, or two runs):
-- the machines, then per claim the verdicts and what was measured, with
-- verdicts recomputed by the current rules.
function M.compare(a, b, name_a, name_b)
  lab.reverdict(a); lab.reverdict(b)
  name_a, name_b = name_a or "A", name_b or "B"
  local o = {}
  local function machine(m)
    m = m or {}
    return ("%s, %s cores, %s, %s, load %s"):format(m.cpu_model or "?", tostring(m.cores or "?"), m.kernel or "?",
      m.lua or "?", type(m.loadavg_before) == "table" and tostring(m.loadavg_before[1]) or "?")
  end
  o[#o + 1] = "# procthread lab: comparison"
  o[#o + 1] = ""
  o[#o + 1] = ("- %s: %s (%s, %s mode)"):format(name_a, machine(a.machine), (a.machine or {}).date or "?", a.mode or "?")
  o[#o + 1] = ("- %s: %s (%s, %s mode)"):format(name_b, machine(b.machine), (b.machine or {}).date or "?", b.mode or "?")
  o[#o + 1] = ""
  local ra, rb = M.claims_rows(a), M.claims_rows(b)
  local rows = {}
  for i, r in ipairs(ra) do
    local q = rb[i] or {}
    if q[1] ~= r[1] then
      for _, x in ipairs(rb) do if x[1] == r[1] then q = x end end
    end
    rows[#rows + 1] = { r[1], r[5], q[5] or "not measured",
      ("processes: %s; threads: %s"):format(r[3], r[4]), ("processes: %s; threads: %s"):format(q[3] or "—", q[4] or "—") }
  end
  o[#o + 1] = md_table({ "aspect", "verdict: " .. name_a, "verdict: " .. name_b, "measured: " .. name_a, "measured: " .. name_b }, rows)
  return table.concat(o, "\n") .. "\n"
end

-- Read a results.json back.
function M.read(path)
  local s = util.read_file(path)
  if not s then return nil, "cannot read " .. path end
  local doc, err = json.decode(s)
  if not doc then return nil, path .. ": " .. err end
  if type(doc) ~= "table" or doc.format ~= lab.FORMAT or type(doc.experiments) ~= "table" then
    return nil, path .. ": not a procthread lab results file (format " .. lab.FORMAT .. ")"
  end
  return doc
end

return M
