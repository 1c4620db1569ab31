% PSYCHTOOLBOX_RSVP  itloop RSVP with Psychtoolbox-3: fetch and verify before, flip-locked onsets,
% timing in frames, TTL on the flip, fixation on top, events posted after (docs/rig-client.md).
server = 'http://itloop.lab:8000'; rig_id = 'rig-1'; token = 'itl_...'; cache_dir = 'C:\itloop';

[manifest, paths] = itloop_fetch(server, rig_id, token, cache_dir);
Screen('Preference', 'SkipSyncTests', 0);            % never skip: timing is the point
PsychImaging('PrepareConfiguration');
[win, rect] = PsychImaging('OpenWindow', max(Screen('Screens')), 128);
ifi = Screen('GetFlipInterval', win);                 % seconds per frame, measured
refresh_hz = 1 / ifi;
d = manifest.display;
if ~isempty(d.refresh_hz) && abs(refresh_hz - d.refresh_hz) > 0.5
    sca; error('screen refreshes at %.2f Hz, the batch expects %g Hz', refresh_hz, d.refresh_hz);
end
if ~isempty(d.screen_px) && ~isequal(rect(3:4), reshape(d.screen_px, 1, []))
    sca; error('screen is %s px, the batch expects %s', mat2str(rect(3:4)), mat2str(d.screen_px));
end
% Identity gamma: pixel values reach the screen as served (no LoadNormalizedGammaTable correction).
Screen('LoadNormalizedGammaTable', win, repmat(linspace(0, 1, 256)', 1, 3));

tex = containers.Map();
keys_ = paths.keys();
for k = 1:numel(keys_)
    tex(keys_{k}) = Screen('MakeTexture', win, imread(paths(keys_{k})));
end
[cx, cy] = RectCenter(rect);
% TTL: replace with your hardware (e.g. DaqDOut, IOPort, a parallel port write) called right
% after each Screen('Flip') returns; a photodiode patch in the corner marks the same flips.
ttl = @(level) 0;
patch = [rect(3) - 40, rect(4) - 40, rect(3), rect(4)];

KbName('UnifyKeyNames'); esc = KbName('ESCAPE');
seq = manifest.sequence;
events = struct('event_id', {}, 'seq', {}, 'image_sha256', {}, 'onset_s', {}, 'fixation_ok', {});
t0 = GetSecs();                                       % the session clock
vbl = Screen('Flip', win);
for k = 1:numel(seq)
    it = seq(k);
    n_on = max(1, round(it.on_ms / 1000 / ifi)); n_off = round(it.off_ms / 1000 / ifi);
    img = Screen('Rect', tex(it.image_sha256));
    for f = 1:n_on
        Screen('DrawTexture', win, tex(it.image_sha256), [], CenterRectOnPoint(img, cx, cy), [], 0); % filterMode 0: no interpolation
        Screen('DrawDots', win, [cx; cy], 8, [255 0 0], [], 2);  % fixation on top of the image
        Screen('FillRect', win, 255, patch);
        vbl = Screen('Flip', win, vbl + 0.5 * ifi);   % one flip per frame
        if f == 1, ttl(1); onset = vbl - t0; end     % the flip's VBL timestamp is the onset
    end
    for f = 1:n_off
        Screen('DrawDots', win, [cx; cy], 8, [255 0 0], [], 2);
        Screen('FillRect', win, 0, patch);
        vbl = Screen('Flip', win, vbl + 0.5 * ifi);
        if f == 1, ttl(0); end
    end
    events(end + 1) = struct('event_id', sprintf('%s:%d', manifest.batch_id, it.seq), 'seq', it.seq, ...
        'image_sha256', it.image_sha256, 'onset_s', onset, 'fixation_ok', true); %#ok<SAGROW>
    [~, ~, keyCode] = KbCheck;
    if keyCode(esc), break; end                       % escape: stop, post what was shown
end
sca;
answer = itloop_post_events(server, token, manifest.batch_id, events, ...
    fullfile(cache_dir, [manifest.batch_id '-events.ndjson']), numel(events) == numel(seq));
disp(answer);
