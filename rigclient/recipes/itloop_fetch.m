function [manifest, paths] = itloop_fetch(server, rig_id, token, cache_dir)
% ITLOOP_FETCH  Before the session: the rig's next batch, every image verified by SHA-256.
%   [manifest, paths] = itloop_fetch('http://itloop.lab:8000', 'rig-1', 'itl_...', 'C:\itloop')
%   manifest: the batch manifest (struct, from JSON); paths: containers.Map sha256 -> local PNG path.
%   Plain HTTP (webread/websave, MATLAB R2016b+); SHA-256 through Java. Shared by the
%   Psychtoolbox and NIMH MonkeyLogic recipes (docs/rig-client.md). Errors stop the session:
%   an image that does not hash to its name is never shown.
opts = weboptions('HeaderFields', {'Authorization', ['Bearer ' token]}, 'Timeout', 60, ...
                  'ContentType', 'json');
api = [server '/api/v1'];
try
    manifest = webread([api '/rigs/' rig_id '/batches/next'], opts);
catch err
    error('itloop:fetch', 'cannot get the next batch: %s', err.message);
end
if isempty(manifest)
    error('itloop:fetch', 'no batch published for rig %s (HTTP 204)', rig_id);
end
img_dir = fullfile(cache_dir, 'images');
if ~exist(img_dir, 'dir'), mkdir(img_dir); end
paths = containers.Map();
bin = weboptions('HeaderFields', {'Authorization', ['Bearer ' token]}, 'Timeout', 60, ...
                 'ContentType', 'binary');
for k = 1:numel(manifest.images)
    im = manifest.images(k);
    p = fullfile(img_dir, [im.sha256 '.png']);
    if ~(exist(p, 'file') && strcmp(sha256_file(p), im.sha256))
        url = im.url;
        if startsWith(url, '/'), url = [server url]; end
        tmp = [p '.part'];
        websave(tmp, url, bin);
        got = sha256_file(tmp);
        if ~strcmp(got, im.sha256)
            delete(tmp);
            error('itloop:hash', 'image %s: the server sent bytes hashing to %s; not using them', im.sha256, got);
        end
        movefile(tmp, p);
    end
    paths(im.sha256) = p;
end
% The manifest's display block states the screen the batch was made for (check it!).
if isfield(manifest, 'display') && ~isempty(manifest.display)
    d = manifest.display;
    fprintf('itloop: batch %s, %d images, %d presentations; display %s px at %g Hz\n', ...
        manifest.batch_id, numel(manifest.images), numel(manifest.sequence), mat2str(d.screen_px), d.refresh_hz);
end
end

function h = sha256_file(path)
fid = fopen(path, 'r'); data = fread(fid, Inf, '*uint8'); fclose(fid);
md = java.security.MessageDigest.getInstance('SHA-256');
md.update(data);
h = lower(reshape(dec2hex(typecast(md.digest(), 'uint8'))', 1, []));
end
