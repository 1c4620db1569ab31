% MONKEYLOGIC_ITLOOP  itloop with NIMH MonkeyLogic 2 (ML2): plain HTTP before and after the session.
%
% 1. BEFORE: fetch the batch, verify every image, write an ML2 conditions file (one condition per
%    manifest trial, its images in manifest order):
%        [manifest, paths] = itloop_fetch(server, rig_id, token, cache_dir);
%        monkeylogic_itloop('conditions', manifest, paths, fullfile(cache_dir, 'itloop_conditions.txt'));
%    and load that conditions file with the timing script below (itloop_rsvp_timing.m).
% 2. DURING: ML2 presents. toggleobject returns the time of the flip that showed the object (ms
%    from trial start) and sends the event code on that flip, so the recorder gets a sync pulse per
%    image. Timing is in frames: ML2 rounds durations to frames; state on_ms/off_ms as whole frames.
% 3. AFTER: read the BHV2 file, turn the flip times into events on the session clock, post them:
%        monkeylogic_itloop('post', manifest, 'C:\data\session.bhv2', server, token, cache_dir);
%
% Timing script (save as itloop_rsvp_timing.m; TaskObject#1 fixation, #2..#N+1 the trial's images):
%   hotkey('esc', 'escape_screen(); assignin(''caller'',''continue_'',false);');
%   on_ms = 100; off_ms = 100;  % = the manifest's on_ms/off_ms
%   toggleobject(1);  % fixation
%   ontarget = eyejoytrack('acquirefix', 1, 3, 2000); if ~ontarget, trialerror(4); return, end
%   for k = 2:numel(TaskObject)
%       t_on = toggleobject([k 1], 'eventmarker', 100 + k);   % image + fixation redrawn on top
%       held = eyejoytrack('holdfix', 1, 3, on_ms);
%       toggleobject(k, 'eventmarker', 200 + k);             % image off, fixation stays
%       eyejoytrack('holdfix', 1, 3, off_ms);
%       bhv_variable(sprintf('itloop_fix_%d', k - 1), held);
%   end
%   toggleobject(1, 'status', 'off');
function monkeylogic_itloop(action, manifest, varargin)
switch action
    case 'conditions'
        [paths, out] = varargin{:};
        write_conditions(manifest, paths, out);
    case 'post'
        [bhv2, server, token, cache_dir] = varargin{:};
        events = events_from_bhv2(manifest, bhv2);
        all_shown = numel(events) == numel(manifest.sequence);
        answer = itloop_post_events(server, token, manifest.batch_id, events, ...
            fullfile(cache_dir, [manifest.batch_id '-events.ndjson']), all_shown);
        disp(answer);
end
end

function write_conditions(manifest, paths, out)
% ML2 conditions file: Condition, Frequency, Block, Timing File, TaskObject#1 (fixation), #2.. images.
seq = manifest.sequence;
trials = unique([seq.trial]);
fid = fopen(out, 'w');
fprintf(fid, 'Condition\tFrequency\tBlock\tTiming File\tTaskObject#1');
n = max(arrayfun(@(t) sum([seq.trial] == t), trials));
fprintf(fid, '\tTaskObject#%d', 2:n + 1); fprintf(fid, '\n');
for c = 1:numel(trials)
    items = seq([seq.trial] == trials(c));
    fprintf(fid, '%d\t1\t1\titloop_rsvp_timing\tfix(0,0)', c);
    for k = 1:numel(items)
        % pic(file, x, y): at native size; ML2 draws it pixel for pixel (no scaling)
        fprintf(fid, '\tpic(%s,0,0)', paths(items(k).image_sha256));
    end
    fprintf(fid, '\n');
end
fclose(fid);
end

function events = events_from_bhv2(manifest, bhv2)
% Onsets on one session clock: the trial's absolute start plus the flip time of the image's code.
data = mlread(bhv2);
seq = manifest.sequence;
trials = unique([seq.trial]);
events = struct('event_id', {}, 'seq', {}, 'image_sha256', {}, 'onset_s', {}, 'fixation_ok', {});
for t = 1:numel(data)
    tr = data(t);
    items = seq([seq.trial] == trials(tr.Condition));
    codes = tr.BehavioralCodes.CodeNumbers; times = tr.BehavioralCodes.CodeTimes;  % ms from trial start
    for k = 1:numel(items)
        hit = find(codes == 100 + k + 1, 1);
        if isempty(hit), continue, end                % not shown (trial aborted before it)
        if any([events.seq] == items(k).seq), continue, end  % a repeated condition: keep the first showing
        fix_ok = true;
        name = sprintf('itloop_fix_%d', k);
        if isfield(tr.UserVars, name), fix_ok = logical(tr.UserVars.(name)); end
        events(end + 1) = struct('event_id', sprintf('%s:%d', manifest.batch_id, items(k).seq), ...
            'seq', items(k).seq, 'image_sha256', items(k).image_sha256, ...
            'onset_s', (tr.AbsoluteTrialStartTime + times(hit)) / 1000, 'fixation_ok', fix_ok); %#ok<AGROW>
    end
end
end
